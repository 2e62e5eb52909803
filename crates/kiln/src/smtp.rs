//! Mail delivery over SMTP (`--smtp-url`), with `lettre`: `smtp://[user:pass@]host[:port]`
//! (STARTTLS when the server offers it; add `?tls=required` to insist), or `smtps://…` (TLS from
//! the first byte, port 465). Certificates are checked against the system's roots.

use async_trait::async_trait;
use kiln_engine::mail::{Mail, MailSender};
use lettre::message::Mailbox;
use lettre::{AsyncSmtpTransport, AsyncTransport, Message, Tokio1Executor};

pub struct SmtpSender {
    transport: AsyncSmtpTransport<Tokio1Executor>,
    from: Mailbox,
}

impl SmtpSender {
    /// A sender for `url`, mails coming from `from` (`Name <address>` or an address).
    pub fn new(url: &str, from: &str) -> anyhow::Result<SmtpSender> {
        let transport = AsyncSmtpTransport::<Tokio1Executor>::from_url(url)
            .map_err(|e| anyhow::anyhow!("--smtp-url: {e}"))?
            .build();
        let from = from.parse().map_err(|e| anyhow::anyhow!("--mail-from '{from}': {e}"))?;
        Ok(SmtpSender { transport, from })
    }
}

#[async_trait]
impl MailSender for SmtpSender {
    async fn send(&self, mail: &Mail) -> Result<(), String> {
        let to: Mailbox = mail.to.parse().map_err(|e| format!("recipient '{}': {e}", mail.to))?;
        let message = Message::builder()
            .from(self.from.clone())
            .to(to)
            .subject(&mail.subject)
            .body(mail.text.clone())
            .map_err(|e| e.to_string())?;
        self.transport.send(message).await.map(|_| ()).map_err(|e| e.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};

    /// A minimal SMTP server: accepts one session, answers every command, and returns what it
    /// was sent (envelope and data).
    async fn fake_server() -> (u16, tokio::task::JoinHandle<Vec<String>>) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let handle = tokio::spawn(async move {
            let (socket, _) = listener.accept().await.unwrap();
            let (read, mut write) = socket.into_split();
            let mut lines = BufReader::new(read).lines();
            let mut seen = Vec::new();
            write.write_all(b"220 fake ESMTP\r\n").await.unwrap();
            let mut in_data = false;
            while let Ok(Some(line)) = lines.next_line().await {
                seen.push(line.clone());
                if in_data {
                    if line == "." {
                        in_data = false;
                        write.write_all(b"250 queued\r\n").await.unwrap();
                    }
                    continue;
                }
                let reply: &[u8] =
                    match line.split(' ').next().unwrap_or("").to_uppercase().as_str() {
                        "EHLO" => b"250-fake\r\n250 8BITMIME\r\n",
                        "DATA" => {
                            in_data = true;
                            b"354 go ahead\r\n"
                        }
                        "QUIT" => {
                            write.write_all(b"221 bye\r\n").await.unwrap();
                            break;
                        }
                        _ => b"250 ok\r\n",
                    };
                write.write_all(reply).await.unwrap();
            }
            seen
        });
        (port, handle)
    }

    #[tokio::test]
    async fn delivers_over_smtp() {
        let (port, server) = fake_server().await;
        let sender =
            SmtpSender::new(&format!("smtp://127.0.0.1:{port}"), "Kiln <kiln@example.com>")
                .unwrap();
        let mail = Mail {
            to: "ivy@example.com".into(),
            subject: "Welcome: set your password".into(),
            text: "Set it here: https://kiln.example/setpassword/1/abc\n".into(),
        };
        sender.send(&mail).await.unwrap();
        drop(sender);
        let seen = server.await.unwrap();
        let all = seen.join("\n");
        assert!(seen.iter().any(|l| l.starts_with("MAIL FROM:<kiln@example.com>")), "{all}");
        assert!(seen.iter().any(|l| l.starts_with("RCPT TO:<ivy@example.com>")), "{all}");
        assert!(all.contains("Subject: Welcome: set your password"), "{all}");
        assert!(all.contains("https://kiln.example/setpassword/1/abc"), "{all}");
    }

    #[test]
    fn bad_settings_are_refused_at_start() {
        assert!(SmtpSender::new("ftp://nope", "kiln@example.com").is_err());
        assert!(SmtpSender::new("smtp://localhost", "not an address").is_err());
    }
}
