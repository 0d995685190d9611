//! Keys and signed checkpoints: the C2SP `tlog-checkpoint` text (origin, decimal size, base64
//! root) as a C2SP `signed-note`, signed with Ed25519, with keys in the formats Go's
//! `sumdb/note` writes: private `PRIVATE+KEY+<name>+<hash>+<base64>`, verifier
//! `<name>+<hash>+<base64>`, the hash being the first 4 bytes of SHA-256(name ‖ "\n" ‖ 0x01 ‖
//! public key). The note and key code is Cloudflare's `signed_note`; the origin of every
//! checkpoint is the key's name.

use base64::Engine as _;
use signed_note::{Note, StandardSigner, StandardVerifier, VerifierList};
use tlog_tiles::Checkpoint as CheckpointText;

use super::tree::Hash;

/// Ed25519's algorithm byte in a note key.
const ALG_ED25519: u8 = 1;

/// A key or a note that cannot be used, and why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NoteError {
    /// A private key that is not `PRIVATE+KEY+<name>+<hash>+<base64>` with an Ed25519 seed and a
    /// hash that fits it.
    #[error("not a note private key (PRIVATE+KEY+<name>+<hash>+<base64 of 0x01 and an Ed25519 seed>): {0}")]
    PrivateKey(String),
    /// A verifier key that is not `<name>+<hash>+<base64>`.
    #[error(
        "not a note verifier key (<name>+<hash>+<base64 of 0x01 and an Ed25519 public key>): {0}"
    )]
    VerifierKey(String),
    /// A key name that a note cannot carry (empty, a space or a `+`).
    #[error("key name {0:?} is not allowed: it must be non-empty, with no spaces and no '+'")]
    Name(String),
    /// The note is not a well-formed signed note.
    #[error("not a signed note: {0}")]
    Malformed(String),
    /// The note carries no valid signature by the key.
    #[error("not signed by {0}: {1}")]
    Signature(String, String),
    /// The signed text is not a checkpoint, or not one of this log.
    #[error("not a checkpoint of this log: {0}")]
    Checkpoint(String),
    /// Making or using the key failed.
    #[error("{0}")]
    Crypto(String),
}

/// The log's signing key.
#[derive(Clone)]
pub struct LogKey {
    private: String,
    signer: StandardSigner,
    name: String,
    verifier: String,
}

impl std::fmt::Debug for LogKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "LogKey({})", self.verifier)
    }
}

impl LogKey {
    /// Reads a private key as a key file holds it (surrounding whitespace ignored).
    pub fn parse(text: &str) -> Result<LogKey, NoteError> {
        let private = text.trim().to_owned();
        let bad = |why: &str| NoteError::PrivateKey(why.to_owned());
        let rest = private
            .strip_prefix("PRIVATE+KEY+")
            .ok_or_else(|| bad("it does not start with PRIVATE+KEY+"))?;
        let mut parts = rest.splitn(3, '+');
        let (Some(name), Some(_hash), Some(key64)) = (parts.next(), parts.next(), parts.next())
        else {
            return Err(bad("it does not have a name, a hash and a key"));
        };
        let key = base64::engine::general_purpose::STANDARD
            .decode(key64)
            .map_err(|e| bad(&format!("the key is not base64: {e}")))?;
        let seed: [u8; 32] = match key.split_first() {
            Some((&ALG_ED25519, seed)) => seed
                .try_into()
                .map_err(|_| bad("an Ed25519 seed is 32 bytes"))?,
            _ => return Err(bad("the key is not an Ed25519 key (algorithm 1)")),
        };
        let signer = StandardSigner::new(&private).map_err(|e| bad(&e.to_string()))?;
        let public = ed25519_dalek::SigningKey::from_bytes(&seed).verifying_key();
        let verifier = signed_note::new_ed25519_verifier_key(name, &public);
        Ok(LogKey {
            name: name.to_owned(),
            private,
            signer,
            verifier,
        })
    }

    /// A new key named `name`, from the system's random source.
    pub fn generate(name: &str) -> Result<LogKey, NoteError> {
        if !signed_note::is_key_name_valid(name) {
            return Err(NoteError::Name(name.to_owned()));
        }
        let mut seed = [0u8; 32];
        ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut seed)
            .map_err(|_| NoteError::Crypto("the system's random source failed".to_owned()))?;
        let public = ed25519_dalek::SigningKey::from_bytes(&seed).verifying_key();
        let mut encoded_public = vec![ALG_ED25519];
        encoded_public.extend_from_slice(public.as_bytes());
        let mut encoded_private = vec![ALG_ED25519];
        encoded_private.extend_from_slice(&seed);
        LogKey::parse(&format!(
            "PRIVATE+KEY+{name}+{:08x}+{}",
            signed_note::key_id(name, &encoded_public),
            base64::engine::general_purpose::STANDARD.encode(encoded_private)
        ))
    }

    /// The key's name: the origin line of every checkpoint it signs.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The private key, as a key file holds it (without a newline).
    pub fn private_key(&self) -> &str {
        &self.private
    }

    /// The verifier key, `<name>+<hash>+<base64>`.
    pub fn verifier_key(&self) -> &str {
        &self.verifier
    }

    /// The signed checkpoint of the tree of `size` records with this root.
    pub fn sign_checkpoint(&self, size: u64, root: Hash) -> Result<String, NoteError> {
        let text = CheckpointText::new(&self.name, size, root, "")
            .map_err(|e| NoteError::Checkpoint(e.to_string()))?
            .to_bytes();
        let mut note = Note::new(&text, &[]).map_err(|e| NoteError::Malformed(e.to_string()))?;
        note.add_sigs(&[&self.signer])
            .map_err(|e| NoteError::Crypto(e.to_string()))?;
        String::from_utf8(note.to_bytes()).map_err(|e| NoteError::Malformed(e.to_string()))
    }
}

/// What a signed checkpoint says.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Checkpoint {
    /// Records in the tree.
    pub size: u64,
    /// The tree's root.
    pub root: Hash,
}

/// A verifier key, checked.
#[derive(Clone)]
pub struct VerifierKey {
    text: String,
    name: String,
}

impl std::fmt::Debug for VerifierKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "VerifierKey({})", self.text)
    }
}

impl VerifierKey {
    /// Reads `<name>+<hash>+<base64>` (surrounding whitespace ignored).
    pub fn parse(text: &str) -> Result<VerifierKey, NoteError> {
        let text = text.trim();
        StandardVerifier::new(text).map_err(|e| NoteError::VerifierKey(e.to_string()))?;
        let name = text.split('+').next().unwrap_or_default().to_owned();
        Ok(VerifierKey {
            text: text.to_owned(),
            name,
        })
    }

    /// The key's name: the origin of the log's checkpoints.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The key as text.
    pub fn as_str(&self) -> &str {
        &self.text
    }

    /// Checks that `note` is a checkpoint of this key's log, signed by it, and says what it
    /// holds.
    pub fn open(&self, note: &str) -> Result<Checkpoint, NoteError> {
        let parsed =
            Note::from_bytes(note.as_bytes()).map_err(|e| NoteError::Malformed(e.to_string()))?;
        let verifier =
            StandardVerifier::new(&self.text).map_err(|e| NoteError::VerifierKey(e.to_string()))?;
        parsed
            .verify(&VerifierList::new(vec![Box::new(verifier)]))
            .map_err(|e| NoteError::Signature(self.text.clone(), e.to_string()))?;
        let checkpoint = CheckpointText::from_bytes(parsed.text())
            .map_err(|e| NoteError::Checkpoint(e.to_string()))?;
        if checkpoint.origin() != self.name {
            return Err(NoteError::Checkpoint(format!(
                "its origin is {:?}, the log's is {:?}",
                checkpoint.origin(),
                self.name
            )));
        }
        Ok(Checkpoint {
            size: checkpoint.size(),
            root: *checkpoint.hash(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The example key and note of Go's `golang.org/x/mod/sumdb/note` documentation.
    const GO_PRIVATE: &str =
        "PRIVATE+KEY+PeterNeumann+c74f20a3+AYEKFALVFGyNhPJEMzD1QIDr+Y7hfZx09iUvxdXHKDFz";
    const GO_VERIFIER: &str = "PeterNeumann+c74f20a3+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW";
    const GO_TEXT: &str = "If you think cryptography is the answer to your problem,\nthen you don't know what your problem is.\n";
    const GO_SIGNATURE: &str = "— PeterNeumann x08go/ZJkuBS9UG/SffcvIAQxVBtiFupLLr8pAcElZInNIuGUgYN1FFYC2pZSNXgKvqfqdngotpRZb6KE6RyyBwJnAM=\n";

    #[test]
    fn keys_read_and_sign_as_go_sumdb_note_does() {
        let key = LogKey::parse(&format!("{GO_PRIVATE}\n")).unwrap();
        assert_eq!(key.name(), "PeterNeumann");
        assert_eq!(key.verifier_key(), GO_VERIFIER);
        assert_eq!(key.private_key(), GO_PRIVATE);
        let mut note = Note::new(GO_TEXT.as_bytes(), &[]).unwrap();
        note.add_sigs(&[&key.signer]).unwrap();
        assert_eq!(
            String::from_utf8(note.to_bytes()).unwrap(),
            format!("{GO_TEXT}\n{GO_SIGNATURE}")
        );
    }

    /// A second Ed25519 implementation (ring's) checks the signature line of a checkpoint:
    /// `— <name> <base64(key hash ‖ signature)>` over the checkpoint text.
    #[test]
    fn a_checkpoint_is_the_c2sp_text_signed_as_a_note_and_ring_agrees() {
        let key = LogKey::generate("example.com/log").unwrap();
        let root = super::super::tree::leaf_hash(b"x");
        let note = key.sign_checkpoint(7, root).unwrap();
        let text = format!("example.com/log\n7\n{root}\n");
        let (body, sig_line) = note.split_once("\n\n").unwrap();
        assert_eq!(format!("{body}\n"), text);
        let b64 = sig_line
            .strip_prefix("\u{2014} example.com/log ")
            .unwrap()
            .trim_end();
        let blob = base64::engine::general_purpose::STANDARD
            .decode(b64)
            .unwrap();
        let vkey = key.verifier_key();
        let hash = vkey.split('+').nth(1).unwrap();
        assert_eq!(
            format!("{:08x}", u32::from_be_bytes(blob[..4].try_into().unwrap())),
            hash
        );
        let public = base64::engine::general_purpose::STANDARD
            .decode(vkey.splitn(3, '+').nth(2).unwrap())
            .unwrap();
        assert_eq!(public[0], 1);
        ring::signature::UnparsedPublicKey::new(&ring::signature::ED25519, &public[1..])
            .verify(text.as_bytes(), &blob[4..])
            .unwrap();
        let opened = VerifierKey::parse(vkey).unwrap().open(&note).unwrap();
        assert_eq!(opened, Checkpoint { size: 7, root });
    }

    #[test]
    fn a_checkpoint_changed_or_signed_by_another_key_is_refused() {
        let key = LogKey::generate("example.com/log").unwrap();
        let vkey = VerifierKey::parse(key.verifier_key()).unwrap();
        let note = key
            .sign_checkpoint(7, super::super::tree::EMPTY_ROOT)
            .unwrap();
        let changed = note.replacen("\n7\n", "\n8\n", 1);
        assert!(matches!(vkey.open(&changed), Err(NoteError::Signature(..))));
        let other = LogKey::generate("example.com/log").unwrap();
        let foreign = other
            .sign_checkpoint(7, super::super::tree::EMPTY_ROOT)
            .unwrap();
        assert!(matches!(vkey.open(&foreign), Err(NoteError::Signature(..))));
        let renamed = LogKey::generate("example.com/other").unwrap();
        assert!(VerifierKey::parse(renamed.verifier_key())
            .unwrap()
            .open(&note)
            .is_err());
        assert!(matches!(vkey.open("hello"), Err(NoteError::Malformed(_))));
    }

    #[test]
    fn malformed_keys_are_refused_with_the_reason() {
        for bad in [
            "",
            "PRIVATE+KEY+x",
            "PRIVATE+KEY+PeterNeumann+c74f20a3+!!!",
            "PRIVATE+KEY+PeterNeumann+c74f20a4+AYEKFALVFGyNhPJEMzD1QIDr+Y7hfZx09iUvxdXHKDFz",
            "PRIVATE+KEY+PeterNeumann+c74f20a3+AgEKFALVFGyNhPJEMzD1QIDr+Y7hfZx09iUvxdXHKDFz",
            GO_VERIFIER,
        ] {
            let e = LogKey::parse(bad).unwrap_err();
            assert!(matches!(e, NoteError::PrivateKey(_)), "{bad}: {e}");
        }
        assert!(VerifierKey::parse(
            "PeterNeumann+c74f20a4+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW"
        )
        .is_err());
        assert!(VerifierKey::parse(GO_PRIVATE).is_err());
        assert!(matches!(LogKey::generate("a b"), Err(NoteError::Name(_))));
        assert!(matches!(LogKey::generate("a+b"), Err(NoteError::Name(_))));
    }
}
