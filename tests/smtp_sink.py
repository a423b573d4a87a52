#!/usr/bin/env python3
"""A recording SMTP server for herald's email tests, on aiosmtpd (PyPI).

aiosmtpd speaks the SMTP protocol (EHLO, AUTH, MAIL, RCPT, DATA, ...);
this script only decides what to answer at the end of each message's DATA
and writes every message it keeps to a folder, so the tests read what a
mailbox holds:

    python3 tests/smtp_sink.py --dir DIR [--script accept,tempfail,...]
        [--auth USER:PASSWORD] [--tls starttls|implicit --cert PEM --key PEM]

It listens on a free port of 127.0.0.1 and prints "listening on PORT" once
it accepts connections. It stops when its standard input closes (the test
that started it ended).

--script names, in order, what happens to each message at the end of its
DATA (then "accept" for the rest):
  accept    keep it, answer 250
  tempfail  answer 451 (not kept)
  busy      answer 421, the server busy or limiting (not kept)
  reject    answer 554 (not kept)
  drop      keep it, then close the connection without answering: a lost
            final reply, after which the client cannot know it was kept

Each kept message is DIR/NNNN.eml (the content as received) with
DIR/NNNN.json beside it ({"mail_from", "rcpt_tos", "login"}), written
under a temporary name first, so a reader never sees half a message.
--auth requires AUTH (PLAIN or LOGIN) with that login before MAIL; on
loopback without TLS (aiosmtpd refuses AUTH without TLS unless told).
--tls starttls offers STARTTLS and requires it before MAIL; --tls implicit
speaks TLS from the first byte; both with the certificate --cert and its
key --key.
"""

import argparse
import asyncio
import json
import logging
import os
import ssl
import sys
import warnings

from aiosmtpd.smtp import SMTP, AuthResult

ACTIONS = ("accept", "tempfail", "busy", "reject", "drop")


class Recorder:
    def __init__(self, folder, script):
        self.folder = folder
        self.script = list(script)
        self.kept = 0

    def keep(self, session, envelope):
        self.kept += 1
        base = os.path.join(self.folder, f"{self.kept:04}")
        login = getattr(session, "sink_login", None)
        meta = {
            "mail_from": envelope.mail_from,
            "rcpt_tos": list(envelope.rcpt_tos),
            "login": login,
        }
        for suffix, data in ((".eml", envelope.original_content),
                             (".json", json.dumps(meta).encode())):
            with open(base + suffix + ".tmp", "wb") as f:
                f.write(data)
            os.rename(base + suffix + ".tmp", base + suffix)

    async def handle_DATA(self, server, session, envelope):
        action = self.script.pop(0) if self.script else "accept"
        if action == "tempfail":
            return "451 4.3.0 Try again later"
        if action == "busy":
            return "421 4.7.0 Too many messages, slow down"
        if action == "reject":
            return "554 5.6.0 Message refused"
        self.keep(session, envelope)
        if action == "drop":
            server.transport.close()
        return "250 2.0.0 OK: queued"


class Authenticator:
    def __init__(self, login, password):
        self.login = login.encode()
        self.password = password.encode()

    def __call__(self, server, session, envelope, mechanism, auth_data):
        ok = (auth_data.login == self.login
              and auth_data.password == self.password)
        if ok:
            session.sink_login = auth_data.login.decode()
        return AuthResult(success=ok, handled=False)


async def serve(args):
    # Plain AUTH on loopback is what the tests want: no warnings about it.
    warnings.simplefilter("ignore")
    logging.getLogger("mail.log").setLevel(logging.ERROR)
    os.makedirs(args.dir, exist_ok=True)
    script = [a for a in args.script.split(",") if a]
    for action in script:
        if action not in ACTIONS:
            sys.exit(f"--script: unknown action {action!r}; one of {ACTIONS}")
    handler = Recorder(args.dir, script)
    options = {}
    if args.auth:
        login, _, password = args.auth.partition(":")
        options = dict(authenticator=Authenticator(login, password),
                       auth_required=True, auth_require_tls=False)
    implicit = None
    if args.tls:
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(args.cert, args.key)
        if args.tls == "starttls":
            options.update(tls_context=context, require_starttls=True)
        else:
            implicit = context
    loop = asyncio.get_running_loop()
    server = await loop.create_server(
        lambda: SMTP(handler, hostname="sink.test", **options),
        host="127.0.0.1", port=0, ssl=implicit)
    port = server.sockets[0].getsockname()[1]
    print(f"listening on {port}", flush=True)
    await loop.run_in_executor(None, sys.stdin.read)
    server.close()


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dir", required=True)
    parser.add_argument("--script", default="")
    parser.add_argument("--auth")
    parser.add_argument("--tls", choices=("starttls", "implicit"))
    parser.add_argument("--cert")
    parser.add_argument("--key")
    asyncio.run(serve(parser.parse_args()))


if __name__ == "__main__":
    main()
