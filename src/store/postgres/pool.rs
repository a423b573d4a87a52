//! The connection pool: connecting with herald's session settings, taking
//! a connection, transactions with statements prepared once per connection,
//! and telling an unreachable database from a refused operation.

use super::*;

impl Conn<'_> {
    pub(super) async fn begin(&mut self) -> Result<Tx<'_>, StoreError> {
        let Conn {
            client, statements, ..
        } = self;
        let tx = client
            .as_mut()
            .expect("present until dropped")
            .transaction()
            .await?;
        Ok(Tx { tx, statements })
    }
}

impl Tx<'_> {
    pub(super) async fn statement(&mut self, sql: &'static str) -> Result<Statement, StoreError> {
        if let Some(statement) = self.statements.get(sql) {
            return Ok(statement.clone());
        }
        let statement = self.tx.prepare(sql).await?;
        self.statements.insert(sql, statement.clone());
        Ok(statement)
    }

    pub(super) async fn query(
        &mut self,
        sql: &'static str,
        params: &Params<'_>,
    ) -> Result<Vec<Row>, StoreError> {
        let statement = self.statement(sql).await?;
        Ok(self.tx.query(&statement, params).await?)
    }

    pub(super) async fn query_one(
        &mut self,
        sql: &'static str,
        params: &Params<'_>,
    ) -> Result<Row, StoreError> {
        let statement = self.statement(sql).await?;
        Ok(self.tx.query_one(&statement, params).await?)
    }

    pub(super) async fn query_opt(
        &mut self,
        sql: &'static str,
        params: &Params<'_>,
    ) -> Result<Option<Row>, StoreError> {
        let statement = self.statement(sql).await?;
        Ok(self.tx.query_opt(&statement, params).await?)
    }

    pub(super) async fn execute(
        &mut self,
        sql: &'static str,
        params: &Params<'_>,
    ) -> Result<u64, StoreError> {
        let statement = self.statement(sql).await?;
        Ok(self.tx.execute(&statement, params).await?)
    }

    pub(super) async fn commit(self) -> Result<(), StoreError> {
        Ok(self.tx.commit().await?)
    }
}

impl std::ops::Deref for Conn<'_> {
    type Target = Client;
    fn deref(&self) -> &Client {
        self.client.as_ref().expect("present until dropped")
    }
}

impl std::ops::DerefMut for Conn<'_> {
    fn deref_mut(&mut self) -> &mut Client {
        self.client.as_mut().expect("present until dropped")
    }
}

impl Drop for Conn<'_> {
    fn drop(&mut self) {
        if let Some(client) = self.client.take() {
            if !client.is_closed() {
                let statements = std::mem::take(&mut self.statements);
                self.pool
                    .idle
                    .lock()
                    .expect("pool poisoned")
                    .push((client, statements));
            }
        }
    }
}

/// Whether an error says the database cannot commit at all (unreachable,
/// out of disk or memory, shutting down), rather than that this one
/// operation was refused.
pub(super) fn cannot_commit(error: &StoreError) -> bool {
    match error {
        StoreError::Postgres(error) => match error.code() {
            // No SQLSTATE: the connection itself failed.
            None => true,
            Some(code) => {
                let class = &code.code()[..2];
                matches!(class, "08" | "53" | "57" | "58" | "XX")
            }
        },
        StoreError::Unavailable(_) | StoreError::WriterStopped => true,
        _ => false,
    }
}

pub(super) fn unavailable(what: impl Into<String>) -> StoreError {
    StoreError::Unavailable(what.into())
}

impl Pool {
    pub(super) async fn get(&self) -> Result<Conn<'_>, StoreError> {
        let permit = tokio::time::timeout(
            Duration::from_millis(POOL_WAIT_MS),
            self.permits.clone().acquire_owned(),
        )
        .await
        .map_err(|_| unavailable("no database connection became free in time"))?
        .map_err(|_| unavailable("the connection pool is closed"))?;
        loop {
            let idle = self.idle.lock().expect("pool poisoned").pop();
            match idle {
                Some((client, _)) if client.is_closed() => continue,
                Some((client, statements)) => {
                    return Ok(Conn {
                        client: Some(client),
                        statements,
                        pool: self,
                        _permit: permit,
                    })
                }
                None => break,
            }
        }
        let client = connect(&self.config).await?;
        Ok(Conn {
            client: Some(client),
            statements: Statements::new(),
            pool: self,
            _permit: permit,
        })
    }
}

pub(super) async fn connect(settings: &ConnectionSettings) -> Result<Client, StoreError> {
    let (client, connection) = tokio::time::timeout(
        Duration::from_millis(CONNECT_TIMEOUT_MS),
        settings.connect(),
    )
    .await
    .map_err(|_| unavailable("connecting to PostgreSQL timed out"))??;
    // The connection task ends when the client is dropped or the socket
    // closes.
    tokio::spawn(async move {
        if let Err(error) = connection.await {
            tracing::debug!(%error, "a PostgreSQL connection closed");
        }
    });
    Ok(client)
}

/// Parses the URL and adds herald's session settings to its options; the
/// sessions show as `herald <node>` in `pg_stat_activity`. The URL's TLS
/// parameters (`sslmode`, `sslrootcert`) are read here as libpq reads them,
/// and the root certificates with them, so a bad one stops the start.
///
/// `enable_seqscan`, `enable_hashjoin` and `enable_mergejoin` off: every
/// statement herald runs reads a few rows through an index, and nested loops
/// over index scans are its right plan at any table size. PostgreSQL settles
/// on a generic plan for a prepared statement after five executions; on a
/// fresh database the tables are then nearly empty, a sequential scan with a
/// hash join looks cheapest, and that plan stayed cached while the table
/// grew: a 60,000-delivery burst read 72 million rows in 1,562 sequential
/// scans (57% of the machine's CPU in the PostgreSQL backends). Planning
/// every execution with its values (`plan_cache_mode=force_custom_plan`)
/// avoided that, but the planning itself then took a tenth of the burst's
/// throughput; with these settings the cached generic plans are index plans.
/// (A statement with no index to use still gets a sequential scan.)
/// `jit=off`: herald's statements are short; compiling one (when a large
/// batch's estimate crosses `jit_above_cost`) costs more than running it.
pub(super) fn connection_config(
    url: &str,
    node_id: &str,
) -> Result<ConnectionSettings, StoreError> {
    let home = std::env::var_os("HOME").map(std::path::PathBuf::from);
    let tls = tls::split_url(url, home.as_deref()).map_err(StoreError::InvalidUrl)?;
    let mut config: tokio_postgres::Config = tls
        .url_without_tls
        .parse()
        .map_err(|e: tokio_postgres::Error| StoreError::InvalidUrl(describe_error(&e)))?;
    let options = format!(
        "{} -c statement_timeout={STATEMENT_TIMEOUT_MS} -c synchronous_commit=on \
         -c idle_in_transaction_session_timeout={IDLE_IN_TRANSACTION_MS} \
         -c enable_seqscan=off -c enable_hashjoin=off -c enable_mergejoin=off -c jit=off",
        config.get_options().unwrap_or("")
    );
    config
        .options(options.trim())
        .connect_timeout(Duration::from_millis(CONNECT_TIMEOUT_MS))
        .keepalives(true)
        .keepalives_idle(Duration::from_secs(10))
        .application_name(format!("herald {node_id}"));
    ConnectionSettings::new(config, &tls)
}
