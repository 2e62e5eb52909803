//! Outgoing mail (invitations, password links). Every mail is logged and, when an outbox is
//! configured, appended to `<outbox>/mail.jsonl`, so Kiln works offline; a [`MailSender`]
//! (the `kiln` binary's SMTP one, with `--smtp-url`) delivers it as well.

use async_trait::async_trait;

/// One plain-text mail.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mail {
    pub to: String,
    pub subject: String,
    pub text: String,
}

/// Delivers mail. A failure is logged by the engine and does not fail the request that sent
/// it (the link is in the log and the outbox either way).
#[async_trait]
pub trait MailSender: Send + Sync {
    async fn send(&self, mail: &Mail) -> Result<(), String>;
}
