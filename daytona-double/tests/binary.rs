//! The `daytona-double` program as `scripts/demo`, the benchmarks and the container image run it:
//! the ready line on stdout (preceded by the announced preview tokens), an API that answers with
//! the key given, and a clean exit on SIGTERM. The double's behaviour itself is exercised through
//! the library by the product's end-to-end tests.

use std::io::{BufRead as _, BufReader, Read as _, Write as _};
use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const SANDBOX: &str = "0f8e4c1a-7b2d-4e6f-9a3b-5c7d9e1f2a4b";

/// `GET path` on `addr` with `Authorization: Bearer key`: the status line and the body.
fn get(addr: &str, path: &str, key: &str) -> (String, String) {
    let mut stream = TcpStream::connect(addr).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {key}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut answer = String::new();
    stream.read_to_string(&mut answer).unwrap();
    let (head, body) = answer.split_once("\r\n\r\n").unwrap();
    (head.lines().next().unwrap().to_owned(), body.to_owned())
}

#[test]
fn prints_tokens_then_the_ready_line_serves_the_api_and_stops_on_sigterm() {
    let mut child = KillOnDrop(
        Command::new(env!("CARGO_BIN_EXE_daytona-double"))
            .args(["--api-addr", "127.0.0.1:0", "--proxy-addr", "127.0.0.1:0"])
            .args(["--api-key", "binary-test-key", "--sandbox", SANDBOX])
            .arg("--announce-tokens")
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("daytona-double starts"),
    );
    let mut stdout = BufReader::new(child.0.stdout.take().unwrap());
    let mut line = String::new();

    // The initial sandbox's token is announced, then the one ready line names it.
    stdout.read_line(&mut line).unwrap();
    let announced: serde_json::Value = serde_json::from_str(&line).unwrap();
    let token = announced["preview_token_issued"]
        .as_str()
        .unwrap()
        .to_owned();
    line.clear();
    stdout.read_line(&mut line).unwrap();
    let ready: serde_json::Value = serde_json::from_str(&line).unwrap();
    // Field by field, in this order (scripts parse it).
    let api_url = ready["api_url"].as_str().unwrap();
    let proxy_port = &ready["proxy_port"];
    assert_eq!(
        line.trim_end(),
        format!(
            r#"{{"api_url":"{api_url}","proxy_port":{proxy_port},"proxy_domain":"proxy.localhost","sandboxes":[{{"id":"{SANDBOX}","token":"{token}"}}]}}"#
        )
    );
    assert!(api_url.starts_with("http://127.0.0.1:"), "{api_url}");

    let addr = api_url
        .strip_prefix("http://")
        .and_then(|rest| rest.strip_suffix("/api"))
        .unwrap();
    let path = format!("/api/sandbox/{SANDBOX}/ports/3000/preview-url");
    let (status, body) = get(addr, &path, "binary-test-key");
    assert_eq!(status, "HTTP/1.1 200 OK", "{body}");
    let preview: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(preview["token"], token.as_str());
    let (status, _) = get(addr, &path, "another-key");
    assert_eq!(status, "HTTP/1.1 401 Unauthorized");

    let killed = Command::new("kill")
        .args(["-TERM", &child.0.id().to_string()])
        .status()
        .unwrap();
    assert!(killed.success());
    let deadline = Instant::now() + Duration::from_secs(10);
    let status = loop {
        if let Some(status) = child.0.try_wait().unwrap() {
            break status;
        }
        assert!(
            Instant::now() < deadline,
            "still running 10 s after SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    assert_eq!(status.code(), Some(0));
}

/// The double, killed if the test fails before it stops.
struct KillOnDrop(Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}
