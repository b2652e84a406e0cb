//! Debian's redis-server (`scripts/install-debian redis-server redis-server`), as the shared
//! revocation store of several replicas: on a free loopback port, without persistence, killed on
//! drop; optionally TLS only, with a password.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use crate::{Proc, TlsFiles, eventually, free_port};

/// A redis-server on 127.0.0.1 without persistence, killed on drop.
pub struct RedisServer {
    bin: PathBuf,
    pub port: u16,
    tls: Option<RedisTls>,
    proc: Option<Proc>,
}

/// `rediss://` only (`--port 0`): the server's certificate, the CA file it trusts for clients
/// (which need none), and the password clients must give.
struct RedisTls {
    server: TlsFiles,
    ca_file: PathBuf,
    password: String,
}

impl RedisServer {
    /// `redis://`, no password.
    pub async fn start(bin: PathBuf) -> RedisServer {
        RedisServer::launch(bin, None).await
    }

    /// TLS only, with `server`'s certificate (`ca_file` issued it) and `password`.
    pub async fn start_tls(
        bin: PathBuf,
        server: &TlsFiles,
        ca_file: &Path,
        password: &str,
    ) -> RedisServer {
        let tls = RedisTls {
            server: server.clone(),
            ca_file: ca_file.to_owned(),
            password: password.to_owned(),
        };
        RedisServer::launch(bin, Some(tls)).await
    }

    async fn launch(bin: PathBuf, tls: Option<RedisTls>) -> RedisServer {
        let mut server = RedisServer {
            bin,
            port: free_port(),
            tls,
            proc: None,
        };
        server.restart().await;
        server
    }

    /// For `--redis-url`.
    pub fn url(&self) -> String {
        match &self.tls {
            None => format!("redis://127.0.0.1:{}/", self.port),
            Some(tls) => format!("rediss://:{}@127.0.0.1:{}/", tls.password, self.port),
        }
    }

    /// Starts it (again, on the same port, empty) and waits until it accepts connections.
    pub async fn restart(&mut self) {
        self.kill();
        let port = self.port.to_string();
        let mut command = Command::new(&self.bin);
        command.args(["--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]);
        match &self.tls {
            None => {
                command.args(["--port", &port]);
            }
            Some(tls) => {
                command
                    .args(["--port", "0", "--tls-port", &port])
                    .arg("--tls-cert-file")
                    .arg(&tls.server.cert)
                    .arg("--tls-key-file")
                    .arg(&tls.server.key)
                    .arg("--tls-ca-cert-file")
                    .arg(&tls.ca_file)
                    .args(["--tls-auth-clients", "no"])
                    .args(["--requirepass", &tls.password]);
            }
        }
        let mut proc = Proc::spawn("redis-server", &mut command);
        eventually(
            "redis-server to accept connections",
            Duration::from_secs(10),
            || {
                proc.assert_running();
                let ready = proc.stdout().contains("Ready to accept connections");
                async move { ready.then_some(()) }
            },
        )
        .await;
        self.proc = Some(proc);
    }

    pub fn kill(&mut self) {
        if let Some(mut proc) = self.proc.take() {
            proc.kill();
        }
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
    }
}
