//! PEM blocks and the one DER walk the mock needs (the RSA key inside a
//! `PUBLIC KEY`); shared by the service account's key reading and the
//! mock's signature check. A leaf: it imports nothing of herald.

use base64::engine::general_purpose::STANDARD;
use base64::Engine;

/// The DER bytes of a PEM block labelled `label` (`PRIVATE KEY`,
/// `PUBLIC KEY`), or why there is none.
pub fn pem_der(pem: &str, label: &str) -> Result<Vec<u8>, String> {
    let begin = format!("-----BEGIN {label}-----");
    let end = format!("-----END {label}-----");
    let Some(start) = pem.find(&begin) else {
        let found = pem
            .find("-----BEGIN ")
            .and_then(|at| pem[at + 11..].split_once("-----"))
            .map(|(found, _)| found.to_owned());
        return Err(match found {
            Some(found) => format!("a PEM {found}, not a {label} (BEGIN {label})"),
            None => format!("no PEM block (-----BEGIN {label}-----)"),
        });
    };
    let body = &pem[start + begin.len()..];
    let Some(stop) = body.find(&end) else {
        return Err(format!("the PEM block has no {end} line"));
    };
    let text: String = body[..stop]
        .chars()
        .filter(|c| !c.is_whitespace())
        .collect();
    STANDARD
        .decode(text)
        .map_err(|e| format!("the PEM block is not base64: {e}"))
}

/// One DER item at the start of `bytes`: its tag, its content, the rest.
fn der_item(bytes: &[u8]) -> Option<(u8, &[u8], &[u8])> {
    let (&tag, rest) = bytes.split_first()?;
    let (&first, rest) = rest.split_first()?;
    let (len, rest) = if first < 0x80 {
        (usize::from(first), rest)
    } else {
        let count = usize::from(first & 0x7f);
        if count == 0 || count > 4 || rest.len() < count {
            return None;
        }
        let len = rest[..count]
            .iter()
            .fold(0usize, |len, b| (len << 8) | usize::from(*b));
        (len, &rest[count..])
    };
    (rest.len() >= len).then(|| (tag, &rest[..len], &rest[len..]))
}

/// The `RSAPublicKey` (PKCS#1 DER, what ring verifies with) inside a
/// `SubjectPublicKeyInfo` (a PEM `PUBLIC KEY`).
pub fn rsa_public_key_of_spki(spki: &[u8]) -> Option<&[u8]> {
    const SEQUENCE: u8 = 0x30;
    const BIT_STRING: u8 = 0x03;
    let (SEQUENCE, info, _) = der_item(spki)? else {
        return None;
    };
    let (SEQUENCE, _algorithm, rest) = der_item(info)? else {
        return None;
    };
    let (BIT_STRING, bits, _) = der_item(rest)? else {
        return None;
    };
    // The first byte counts unused bits: a key has none.
    bits.strip_prefix(&[0])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pem_blocks_are_named_when_wrong() {
        assert_eq!(
            pem_der(
                "-----BEGIN PUBLIC KEY-----\nAAEC\n-----END PUBLIC KEY-----\n",
                "PUBLIC KEY"
            ),
            Ok(vec![0, 1, 2])
        );
        let err = pem_der(
            "-----BEGIN CERTIFICATE-----\nAA==\n-----END CERTIFICATE-----",
            "PUBLIC KEY",
        )
        .unwrap_err();
        assert!(err.contains("CERTIFICATE"), "{err}");
        assert!(pem_der("hello", "PRIVATE KEY").is_err());
    }

    #[test]
    fn the_rsa_key_is_found_inside_its_spki() {
        // SEQUENCE { SEQUENCE { OID rsaEncryption, NULL }, BIT STRING { 0, key } }
        let key = [0x30, 0x03, 0x02, 0x01, 0x05];
        let mut spki = vec![0x30, 0x17, 0x30, 0x0d, 0x06, 0x09];
        spki.extend([
            0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x01, 0x05, 0x00,
        ]);
        spki.extend([0x03, 0x06, 0x00]);
        spki.extend(key);
        assert_eq!(rsa_public_key_of_spki(&spki), Some(&key[..]));
        assert_eq!(rsa_public_key_of_spki(&spki[..10]), None);
    }
}
