//! Hostile input and failing dependencies (issue 8), end to end through a real Envoy on 127.0.0.1:
//! forged and malformed tokens, request and header games, host games (raw HTTP/1.1 where a client
//! library would refuse to send the request), unusable Daytona answers, and daytona-authz dying
//! under load. Every refusal is checked at the status Envoy returns AND at the Daytona double: what
//! reached Daytona's API (`api_calls`) and its preview proxy (`proxy_requests`), i.e. the sandbox.
//! Every test ends by checking daytona-authz still answers and logged no panic.
//!
//! What these tests pin down (decisions, not accidents):
//! * `kid` never selects an HS256 key: a token our secret signed is good whatever its `kid` says,
//!   one signed with any other key is not, whatever `kid`, `jku`, `x5u` or `jwk` say.
//! * `exp` is a number; `exp: u64::MAX` (or `1.8e19`) is a token that never expires and is
//!   accepted (only our signer can make one); `1e300` is refused (not representable).
//! * Duplicate claim keys: the last one wins (serde_json); the sandbox reached is still the one
//!   the host names, or nothing.
//! * Over HTTP/1.1 Envoy joins repeated headers with `,` (`Cookie` with `; `) before the Check, so
//!   two `Authorization` headers arrive as one unparseable value: still 401.
//! * Envoy caps request headers (request line included) at 64 KiB with 431 and at 100 headers,
//!   and answers 400 for `_` in header names, `#` in the target and non-ASCII hosts; two `Host`
//!   headers are joined, which daytona-authz refuses as no host of ours (400).
//! * An absolute-form target (`GET http://host/ HTTP/1.1`) wins over `Host` (RFC 9112 §3.2.2):
//!   daytona-authz and the forward proxy both see the target's authority. An `https://` one on
//!   this plain-HTTP listener is refused by Envoy itself (403).

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use base64::Engine as _;
use jsonwebtoken::jwk::Jwk;
use jsonwebtoken::{Algorithm, EncodingKey};
use serde_json::{Value, json};
use support::{
    Authz, AuthzOptions, FakeDaytonaApi, JWT_SECRET, PREVIEW_DOMAIN, Stack, bearer, echoed_headers,
    host_for, now, raw, raw_get, token_for,
};

const OTHER_SANDBOX: &str = "11111111-2222-4333-8444-555555555555";

// ---------------------------------------------------------------------------------------------
// Helpers

fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

/// A compact JWS with exactly these header and payload bytes (duplicate keys and all).
fn jws(header: &str, payload: &str, key: &EncodingKey, alg: Algorithm) -> String {
    jws_bytes(header.as_bytes(), payload.as_bytes(), key, alg)
}

fn jws_bytes(header: &[u8], payload: &[u8], key: &EncodingKey, alg: Algorithm) -> String {
    let message = format!("{}.{}", b64(header), b64(payload));
    let signature = jsonwebtoken::crypto::sign(message.as_bytes(), key, alg).unwrap();
    format!("{message}.{signature}")
}

/// The HS256 key daytona-authz trusts (the harness's `--jwt-secret`).
fn our_key() -> EncodingKey {
    EncodingKey::from_secret(JWT_SECRET.as_bytes())
}

/// `{"sandbox_id": id, "exp": in ten minutes}` as JSON text.
fn claims(sandbox_id: &str) -> String {
    json!({ "sandbox_id": sandbox_id, "exp": now() + 600 }).to_string()
}

/// Percent-encodes everything but unreserved characters, for a query value.
fn query_escape(text: &str) -> String {
    form_urlencoded::byte_serialize(text.as_bytes()).collect()
}

/// The JSON denial daytona-authz renders for a bad or missing token.
fn assert_invalid_token(status: u16, body: &str, what: &str) {
    assert_eq!(status, 401, "{what}: {body}");
    let json: Value =
        serde_json::from_str(body).unwrap_or_else(|e| panic!("{what}: not JSON ({e}): {body}"));
    assert_eq!(json["error"], "invalid_token", "{what}: {body}");
}

/// How many requests Daytona's preview proxy (i.e. a sandbox) has received.
async fn forwarded(stack: &Stack) -> usize {
    stack.double.proxy_requests().await.len()
}

/// The preview-proxy host a request for `sandbox_id` (port 3000) reaches at the double.
fn upstream_host(stack: &Stack, sandbox_id: &str) -> String {
    format!(
        "3000-{sandbox_id}.proxy.localhost:{}",
        stack.double.proxy_port
    )
}

/// Every request that reached Daytona's proxy went to `sandbox_id`'s port 3000.
async fn assert_only_reached(stack: &Stack, sandbox_id: &str) {
    let expected = upstream_host(stack, sandbox_id);
    for request in stack.double.proxy_requests().await {
        assert_eq!(
            request.host, expected,
            "a request reached another sandbox: {request:?}"
        );
    }
}

/// daytona-authz survived: no panic in its log, still ready, and a good token still opens the
/// default sandbox (this makes one more proxy request, and an API call if nothing is cached).
async fn assert_still_answering(stack: &Stack) {
    let logs = stack.authz.proc.stderr();
    assert!(
        !logs.contains("panicked"),
        "daytona-authz panicked:\n{logs}"
    );
    assert!(stack.authz.is_ready().await, "daytona-authz is not ready");
    let reply = stack
        .get(
            &stack.host(3000),
            "/",
            &[("authorization", &bearer(&stack.token(None)))],
        )
        .await;
    assert_eq!(reply.status, 200, "after the attacks: {}", reply.body);
}

/// A listener that accepts and counts connections: stands in for an attacker's key server
/// (`jku`, `x5u`); nothing may ever connect to it.
struct CountingListener {
    addr: std::net::SocketAddr,
    accepted: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl CountingListener {
    async fn start() -> CountingListener {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let accepted = Arc::new(AtomicUsize::new(0));
        let count = Arc::clone(&accepted);
        let task = tokio::spawn(async move {
            while let Ok((socket, _)) = listener.accept().await {
                count.fetch_add(1, Ordering::SeqCst);
                drop(socket);
            }
        });
        CountingListener {
            addr,
            accepted,
            task,
        }
    }
}

impl Drop for CountingListener {
    fn drop(&mut self) {
        self.task.abort();
    }
}

// ---------------------------------------------------------------------------------------------
// 1. Token attacks

#[tokio::test]
async fn forged_and_malformed_tokens_get_401_from_every_source_and_never_reach_daytona() {
    let stack = Stack::start().await;
    let id = stack.sandbox_id().to_owned();
    let host = stack.host(3000);
    let good = stack.token(None);
    let body = claims(&id);
    let attacker_server = CountingListener::start().await;
    let attacker_url = format!("http://{}/jwks.json", attacker_server.addr);

    // An attacker's own keys: an HMAC secret, an empty one, an EC key pair.
    let attacker_hs = EncodingKey::from_secret(b"attacker-chosen-secret-0123456789abcdef");
    let empty_hs = EncodingKey::from_secret(b"");
    let attacker_ec_pair = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let attacker_ec =
        EncodingKey::from_ec_pem(attacker_ec_pair.serialize_pem().as_bytes()).unwrap();
    let attacker_jwk: Value =
        serde_json::to_value(Jwk::from_encoding_key(&attacker_ec, Algorithm::ES256).unwrap())
            .unwrap();
    let attacker_oct =
        json!({ "kty": "oct", "k": b64(b"attacker-chosen-secret-0123456789abcdef") });

    let hs =
        |header: Value, key: &EncodingKey| jws(&header.to_string(), &body, key, Algorithm::HS256);
    let es = |header: Value| jws(&header.to_string(), &body, &attacker_ec, Algorithm::ES256);
    let ours = |header: &str, payload: &str| jws(header, payload, &our_key(), Algorithm::HS256);
    let exp = now() + 600;

    // Non-canonical base64url: the HS256 signature is 32 bytes = 43 characters whose last one
    // carries 2 unused bits; setting them gives another string for the same bytes.
    let mut malleable = good.clone();
    let last = malleable.pop().unwrap();
    const ALPHABET: &str = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let index = ALPHABET.find(last).unwrap();
    malleable.push(ALPHABET.as_bytes()[(index & !3) | ((index + 1) & 3)] as char);
    let (good_header, good_rest) = good.split_once('.').unwrap();
    // Good claims, then a string holding the byte 0xfe (not UTF-8).
    let mut bad_utf8_payload = format!(r#"{{"sandbox_id":"{id}","exp":{exp},"x":""#).into_bytes();
    bad_utf8_payload.extend_from_slice(b"\xfe\"}");

    let cases: Vec<(&str, String)> = vec![
        // kid as a path or an SQL fragment, with a key the attacker chose (e.g. the empty
        // contents of /dev/null): kid never selects an HS256 key.
        (
            "kid ../../../../dev/null, empty HMAC key",
            hs(
                json!({ "alg": "HS256", "kid": "../../../../dev/null" }),
                &empty_hs,
            ),
        ),
        (
            "kid ../../etc/passwd, attacker HMAC key",
            hs(
                json!({ "alg": "HS256", "kid": "../../etc/passwd" }),
                &attacker_hs,
            ),
        ),
        (
            "kid ' OR 1=1 --, attacker HMAC key",
            hs(
                json!({ "alg": "HS256", "kid": "' OR 1=1 --" }),
                &attacker_hs,
            ),
        ),
        (
            "kid ' OR 1=1 --, attacker EC key",
            es(json!({ "alg": "ES256", "kid": "' OR 1=1 --" })),
        ),
        (
            "kid with NUL and CRLF",
            hs(
                json!({ "alg": "HS256", "kid": "a\u{0}b\r\nc" }),
                &attacker_hs,
            ),
        ),
        // Keys the token brings along must never be fetched or used.
        (
            "jku to the attacker's JWKS",
            es(json!({ "alg": "ES256", "kid": "attacker", "jku": attacker_url })),
        ),
        (
            "x5u to the attacker's certificate",
            es(json!({ "alg": "ES256", "x5u": attacker_url })),
        ),
        (
            "embedded jwk (EC)",
            es(json!({ "alg": "ES256", "jwk": attacker_jwk })),
        ),
        (
            "embedded jwk (oct) for HS256",
            hs(json!({ "alg": "HS256", "jwk": attacker_oct }), &attacker_hs),
        ),
        (
            "jku, x5u and jwk together",
            es(
                json!({ "alg": "ES256", "jku": attacker_url, "x5u": attacker_url, "jwk": attacker_jwk }),
            ),
        ),
        // `crit`: we understand no extension, so a token that requires one fails, even when
        // signed with our own key.
        (
            "crit [exp]",
            ours(r#"{"alg":"HS256","crit":["exp"]}"#, &body),
        ),
        ("crit []", ours(r#"{"alg":"HS256","crit":[]}"#, &body)),
        ("crit null", ours(r#"{"alg":"HS256","crit":null}"#, &body)),
        (
            "crit naming an unknown header",
            ours(r#"{"alg":"HS256","crit":["x-ext"],"x-ext":1}"#, &body),
        ),
        // exp that is not a usable NumericDate.
        (
            "exp as a string",
            ours(
                r#"{"alg":"HS256"}"#,
                &format!(r#"{{"sandbox_id":"{id}","exp":"{exp}"}}"#),
            ),
        ),
        (
            "exp 1e300",
            ours(
                r#"{"alg":"HS256"}"#,
                &format!(r#"{{"sandbox_id":"{id}","exp":1e300}}"#),
            ),
        ),
        (
            "exp negative",
            ours(
                r#"{"alg":"HS256"}"#,
                &format!(r#"{{"sandbox_id":"{id}","exp":-1}}"#),
            ),
        ),
        (
            "exp null",
            ours(
                r#"{"alg":"HS256"}"#,
                &format!(r#"{{"sandbox_id":"{id}","exp":null}}"#),
            ),
        ),
        (
            "exp as an array",
            ours(
                r#"{"alg":"HS256"}"#,
                &format!(r#"{{"sandbox_id":"{id}","exp":[{exp}]}}"#),
            ),
        ),
        // Duplicate registered claims: refused outright, whichever copy is good.
        (
            "exp twice (expired, then good)",
            ours(
                r#"{"alg":"HS256"}"#,
                &format!(r#"{{"sandbox_id":"{id}","exp":1,"exp":{exp}}}"#),
            ),
        ),
        (
            "exp twice (good, then expired)",
            ours(
                r#"{"alg":"HS256"}"#,
                &format!(r#"{{"sandbox_id":"{id}","exp":{exp},"exp":1}}"#),
            ),
        ),
        (
            "nbf twice (past, then far future)",
            ours(
                r#"{"alg":"HS256"}"#,
                &format!(
                    r#"{{"sandbox_id":"{id}","exp":{exp},"nbf":1,"nbf":{}}}"#,
                    exp + 86400
                ),
            ),
        ),
        (
            "iss twice",
            ours(
                r#"{"alg":"HS256"}"#,
                &format!(r#"{{"sandbox_id":"{id}","exp":{exp},"iss":"a","iss":"b"}}"#),
            ),
        ),
        (
            "alg twice (none, then HS256)",
            ours(r#"{"alg":"none","alg":"HS256"}"#, &body),
        ),
        // A nested JWT (RFC 7519 §5.2): the payload is another JWT, not claims.
        (
            "cty JWT wrapping a good token",
            ours(r#"{"alg":"HS256","cty":"JWT"}"#, &good),
        ),
        (
            "cty JWT wrapping a good token, no cty",
            ours(r#"{"alg":"HS256"}"#, &good),
        ),
        // Payloads that are not a claims object.
        ("payload is an array", ours(r#"{"alg":"HS256"}"#, "[]")),
        ("payload is a string", ours(r#"{"alg":"HS256"}"#, r#""x""#)),
        ("payload is empty", ours(r#"{"alg":"HS256"}"#, "")),
        // Invalid UTF-8 in the header or the payload, validly signed.
        (
            "invalid UTF-8 header",
            jws_bytes(
                b"{\"alg\":\"HS256\",\"x\":\"\xff\"}",
                body.as_bytes(),
                &our_key(),
                Algorithm::HS256,
            ),
        ),
        (
            "invalid UTF-8 payload",
            jws_bytes(
                br#"{"alg":"HS256"}"#,
                &bad_utf8_payload,
                &our_key(),
                Algorithm::HS256,
            ),
        ),
        // Base64 games on a good token.
        ("padded segments", format!("{good_header}==.{good_rest}")),
        (
            "standard alphabet",
            good.replace('-', "+").replace('_', "/") + "+/",
        ),
        ("a '!' in the header", format!("!{good}")),
        ("non-canonical signature bits", malleable),
        (
            "signature removed",
            format!("{}.", good.rsplit_once('.').unwrap().0),
        ),
        ("two segments", good.rsplit_once('.').unwrap().0.to_owned()),
        ("four segments", format!("{good}.{}", b64(b"x"))),
        (
            "JWE-shaped (five segments)",
            format!("{good}.{}.{}", b64(b"x"), b64(b"y")),
        ),
        ("empty segments", "..".to_owned()),
        // Over the 8 KiB limit (refused unread), under Envoy's 64 KiB header cap.
        (
            "9 KiB token",
            ours(
                r#"{"alg":"HS256"}"#,
                &json!({ "sandbox_id": id, "exp": exp, "pad": "x".repeat(9 * 1024) }).to_string(),
            ),
        ),
    ];

    for (name, token) in &cases {
        let query = query_escape(token);
        let attempts = [
            (
                "bearer",
                stack
                    .get(&host, "/", &[("authorization", &bearer(token))])
                    .await,
            ),
            (
                "query",
                stack
                    .get(&host, &format!("/?access_token={query}"), &[])
                    .await,
            ),
            (
                "cookie",
                stack
                    .get(&host, "/", &[("cookie", &format!("daytona_authz={token}"))])
                    .await,
            ),
        ];
        for (source, reply) in attempts {
            assert_invalid_token(reply.status, &reply.body, &format!("{name} ({source})"));
            assert!(
                !reply.body.contains(token.as_str()),
                "{name}: the token is echoed"
            );
        }
    }

    // Bytes no client library would send: invalid UTF-8 and control bytes in the header value.
    let port = stack.envoy.port;
    for (name, value) in [
        (
            "raw 0xff in the token",
            b"Bearer eyJ\xff\xfe.eyJ.x".to_vec(),
        ),
        (
            "raw UTF-8 in the token",
            "Bearer ey\u{e9}J.eyJ.x".as_bytes().to_vec(),
        ),
        (
            "raw 0x80 after a good token",
            [bearer(&good).as_bytes(), b"\x80"].concat(),
        ),
    ] {
        let mut request = format!("GET / HTTP/1.1\r\nHost: {host}\r\nAuthorization: ").into_bytes();
        request.extend_from_slice(&value);
        request.extend_from_slice(b"\r\nConnection: close\r\n\r\n");
        let reply = raw(port, request).await;
        assert_invalid_token(reply.status, &reply.body, name);
    }

    assert_eq!(
        stack.double.api_calls().await,
        0,
        "a forged token reached Daytona's API"
    );
    assert_eq!(
        forwarded(&stack).await,
        0,
        "a forged token reached the sandbox"
    );
    assert_eq!(
        attacker_server.accepted.load(Ordering::SeqCst),
        0,
        "daytona-authz fetched a key the token pointed at"
    );
    assert_still_answering(&stack).await;
}

#[tokio::test]
async fn tokens_our_secret_signed_are_judged_by_their_claims_not_their_odd_headers() {
    let stack = Stack::start().await;
    let id = stack.sandbox_id().to_owned();
    let host = stack.host(3000);
    let other = stack.double.create_sandbox().await.id;
    let ours = |header: &str, payload: &str| jws(header, payload, &our_key(), Algorithm::HS256);
    let exp = now() + 600;

    // (case, token, status): each token is signed with our secret, so only its claims matter.
    let cases: Vec<(&str, String, u16)> = vec![
        // kid does not select HS256 keys: inert, whatever it says.
        (
            "kid ../../etc/passwd",
            ours(r#"{"alg":"HS256","kid":"../../etc/passwd"}"#, &claims(&id)),
            200,
        ),
        (
            "kid ' OR 1=1 --",
            ours(r#"{"alg":"HS256","kid":"' OR 1=1 --"}"#, &claims(&id)),
            200,
        ),
        // jku/x5u/jwk on a token we signed are ignored, not followed.
        (
            "jku on our own token",
            ours(
                r#"{"alg":"HS256","jku":"http://127.0.0.1:1/jwks.json"}"#,
                &claims(&id),
            ),
            200,
        ),
        // exp at the top of the range: a token that never expires, accepted without overflow.
        (
            "exp u64::MAX",
            ours(
                r#"{"alg":"HS256"}"#,
                &format!(r#"{{"sandbox_id":"{id}","exp":{}}}"#, u64::MAX),
            ),
            200,
        ),
        (
            "exp 1.8e19 (a float below u64::MAX)",
            ours(
                r#"{"alg":"HS256"}"#,
                &format!(r#"{{"sandbox_id":"{id}","exp":1.8e19}}"#),
            ),
            200,
        ),
        // Duplicate sandbox claims: the last copy wins; the host still decides which sandbox.
        (
            "sandbox_id other, then ours",
            ours(
                r#"{"alg":"HS256"}"#,
                &format!(r#"{{"sandbox_id":"{other}","sandbox_id":"{id}","exp":{exp}}}"#),
            ),
            200,
        ),
        (
            "sandbox_id ours, then other",
            ours(
                r#"{"alg":"HS256"}"#,
                &format!(r#"{{"sandbox_id":"{id}","sandbox_id":"{other}","exp":{exp}}}"#),
            ),
            403,
        ),
        (
            "ports [3000], then [4000]",
            ours(
                r#"{"alg":"HS256"}"#,
                &format!(r#"{{"sandbox_id":"{id}","ports":[3000],"ports":[4000],"exp":{exp}}}"#),
            ),
            403,
        ),
        // cty says "nested", but the payload is plain claims: cty is not acted on, so this is
        // an ordinary token (the nested case, a JWT as payload, is refused above).
        (
            "cty JWT over plain claims",
            ours(r#"{"alg":"HS256","cty":"JWT"}"#, &claims(&id)),
            200,
        ),
    ];
    for (name, token, want) in &cases {
        let reply = stack
            .get(&host, "/", &[("authorization", &bearer(token))])
            .await;
        assert_eq!(reply.status, *want, "{name}: {}", reply.body);
        if *want == 200 {
            assert_eq!(reply.json()["sandbox_id"], id, "{name}");
        }
    }
    // A token for the other sandbox with a duplicate that names ours never opens the other one.
    let dup = ours(
        r#"{"alg":"HS256"}"#,
        &format!(r#"{{"sandbox_id":"{other}","sandbox_id":"{id}","exp":{exp}}}"#),
    );
    let reply = stack
        .get(
            &host_for(&other, 3000),
            "/",
            &[("authorization", &bearer(&dup))],
        )
        .await;
    assert_eq!(reply.status, 403, "{}", reply.body);

    // A never-expiring token as a share link: the cookie's Max-Age is computed without overflow.
    let forever = ours(
        r#"{"alg":"HS256"}"#,
        &format!(r#"{{"sandbox_id":"{id}","exp":{}}}"#, u64::MAX),
    );
    let reply = stack
        .get(
            &host,
            &format!("/?access_token={forever}"),
            &[("accept", "text/html"), ("sec-fetch-mode", "navigate")],
        )
        .await;
    assert_eq!(reply.status, 302, "{}", reply.body);
    let cookie = reply.header("set-cookie").expect("Set-Cookie");
    let max_age: u64 = cookie
        .split("; ")
        .find_map(|a| a.strip_prefix("Max-Age="))
        .expect("Max-Age")
        .parse()
        .expect("Max-Age is a number");
    assert!(max_age > u64::MAX / 2, "{cookie}");

    assert_only_reached(&stack, &id).await;
    assert_still_answering(&stack).await;
}

#[tokio::test]
async fn oversized_tokens_headers_and_cookies_are_bounded_by_envoy_and_never_a_5xx() {
    let stack = Stack::start().await;
    let host = stack.host(3000);
    let port = stack.envoy.port;
    let good = stack.token(None);
    let big_token = "a".repeat(100 * 1024);

    // 100 KiB tokens: over Envoy's 64 KiB header cap (the request line counts too), so Envoy
    // answers 431 itself; daytona-authz never sees them.
    let replies = [
        (
            "100 KiB bearer",
            raw(
                port,
                raw_get("/", &host, &[("Authorization", &bearer(&big_token))]),
            )
            .await,
        ),
        (
            "100 KiB query token",
            raw(
                port,
                raw_get(&format!("/?access_token={big_token}"), &host, &[]),
            )
            .await,
        ),
        (
            "100 KiB cookie",
            raw(
                port,
                raw_get(
                    "/",
                    &host,
                    &[("Cookie", &format!("daytona_authz={big_token}"))],
                ),
            )
            .await,
        ),
        (
            "70 KiB header",
            raw(
                port,
                raw_get("/", &host, &[("X-Big", &"v".repeat(70 * 1024))]),
            )
            .await,
        ),
        (
            "70 KiB of app cookies with a good token",
            raw(
                port,
                raw_get(
                    "/",
                    &host,
                    &[
                        ("Cookie", &format!("app={}", "c".repeat(70 * 1024))),
                        ("Authorization", &bearer(&good)),
                    ],
                ),
            )
            .await,
        ),
        (
            "70 KiB query with a good token",
            raw(
                port,
                raw_get(
                    &format!("/?x={}&access_token={good}", "q".repeat(70 * 1024)),
                    &host,
                    &[],
                ),
            )
            .await,
        ),
    ];
    for (name, reply) in &replies {
        assert_eq!(reply.status, 431, "{name}: {}", reply.body);
    }

    // More headers than Envoy's default 100: 431 from Envoy too.
    let many: Vec<(String, String)> = (0..101).map(|i| (format!("x-h{i}"), "v".into())).collect();
    let many: Vec<(&str, &str)> = many.iter().map(|(n, v)| (n.as_str(), v.as_str())).collect();
    let reply = stack.get(&host, "/", &many).await;
    assert_eq!(reply.status, 431, "101 headers: {}", reply.body);
    assert_eq!(
        forwarded(&stack).await,
        0,
        "an oversized request was forwarded"
    );

    // Under Envoy's cap, daytona-authz handles big requests itself: a 9 KiB token is refused
    // unread (401), a 60 KiB header beside a good token is fine.
    let nine = "a".repeat(9 * 1024);
    let reply = stack
        .get(&host, "/", &[("cookie", &format!("daytona_authz={nine}"))])
        .await;
    assert_invalid_token(reply.status, &reply.body, "9 KiB cookie");
    let reply = stack
        .get(
            &host,
            "/",
            &[
                ("x-big", &"v".repeat(60 * 1024)),
                ("authorization", &bearer(&good)),
            ],
        )
        .await;
    assert_eq!(reply.status, 200, "60 KiB header: {}", reply.body);
    let reply = raw(
        port,
        raw_get(
            &format!("/?x={}&access_token={good}", "q".repeat(60 * 1024)),
            &host,
            &[],
        ),
    )
    .await;
    assert_eq!(reply.status, 200, "60 KiB query: {}", reply.body);
    let received = stack.double.proxy_requests().await;
    assert_eq!(received.len(), 2);
    assert!(
        !received[1].path.contains("access_token"),
        "token forwarded in a long query"
    );
    assert_still_answering(&stack).await;
}

// ---------------------------------------------------------------------------------------------
// 2. Request games

#[tokio::test]
async fn two_credentials_of_one_kind_are_refused() {
    let stack = Stack::start().await;
    let host = stack.host(3000);
    let port = stack.envoy.port;
    let good = stack.token(None);
    let other = stack.token(Some(vec![3000]));
    let auth = bearer(&good);

    // Two Authorization headers (Envoy joins them with "," over HTTP/1.1, which parses as one
    // bad token; refused either way), in any case, with one or two schemes.
    let header_pairs = [
        (
            "two Bearer headers",
            vec![
                ("authorization", auth.clone()),
                ("authorization", bearer(&other)),
            ],
        ),
        (
            "the same Bearer twice",
            vec![
                ("authorization", auth.clone()),
                ("authorization", auth.clone()),
            ],
        ),
        (
            "Basic, then Bearer",
            vec![
                ("authorization", "Basic dXNlcjpwdw==".into()),
                ("authorization", auth.clone()),
            ],
        ),
        (
            "Bearer, then Basic",
            vec![
                ("authorization", auth.clone()),
                ("authorization", "Basic dXNlcjpwdw==".into()),
            ],
        ),
        (
            "two Bearers in one value",
            vec![("authorization", format!("{auth}, {}", bearer(&other)))],
        ),
    ];
    for (name, headers) in &header_pairs {
        let headers: Vec<(&str, &str)> = headers.iter().map(|(n, v)| (*n, v.as_str())).collect();
        let reply = stack.get(&host, "/", &headers).await;
        assert_invalid_token(reply.status, &reply.body, name);
    }
    let reply = raw(
        port,
        raw_get(
            "/",
            &host,
            &[("Authorization", &auth), ("AUTHORIZATION", &bearer(&other))],
        ),
    )
    .await;
    assert_invalid_token(reply.status, &reply.body, "Authorization and AUTHORIZATION");

    // Two access_token parameters, however spelled.
    for path in [
        format!("/?access_token={good}&access_token={other}"),
        format!("/?access_token={good}&access_token={good}"),
        format!("/?access_token={good}&access_token="),
        format!("/?access_token={good}&access_token"),
        format!("/?access_token={good}&%61ccess_token={other}"),
        format!("/?access%5Ftoken={good}&access_token={good}"),
    ] {
        let reply = stack.get(&host, &path, &[]).await;
        assert_invalid_token(reply.status, &reply.body, &path);
        assert_eq!(
            reply.json()["message"],
            "The request carries more than one access token; send exactly one.",
            "{path}"
        );
    }
    assert_eq!(forwarded(&stack).await, 0);
    assert_eq!(stack.double.api_calls().await, 0);
    assert_still_answering(&stack).await;
}

#[tokio::test]
async fn a_percent_encoded_token_parameter_works_and_never_reaches_upstream() {
    let stack = Stack::start().await;
    let host = stack.host(3000);
    let good = stack.token(None);
    // (request target, what the sandbox must see)
    let cases = [
        (format!("/p?a=1&%61ccess_token={good}&b=2"), "/p?a=1&b=2"),
        (format!("/p?access%5Ftoken={good}"), "/p"),
        // Only the pair is cut out: a bare `z` stays `z` (Envoy's own query removal made it `z=`).
        (format!("/p?access%5ftoken={good}&z"), "/p?z"),
        (
            format!("/p?%61%63%63%65%73%73%5f%74%6f%6b%65%6e={good}&b=%20x"),
            "/p?b=%20x",
        ),
        // The value percent-encoded too.
        (
            format!("/p?x=1&access_token={}", good.replace('.', "%2E")),
            "/p?x=1",
        ),
    ];
    for (target, upstream_path) in &cases {
        let reply = stack.get(&host, target, &[]).await;
        assert_eq!(reply.status, 200, "{target}: {}", reply.body);
        assert_eq!(reply.json()["path"], *upstream_path, "{target}");
        let received = stack.double.proxy_requests().await;
        let last = received.last().unwrap();
        assert_eq!(last.path, *upstream_path, "{target}");
        assert!(!last.path.contains(&good[..20]), "token upstream: {last:?}");
    }

    // In a browser the share link turns into a cookie; the redirect drops every spelling.
    let reply = stack
        .get(
            &host,
            &format!("/p?a=1&%61ccess_token={good}&b=2"),
            &[("accept", "text/html")],
        )
        .await;
    assert_eq!(reply.status, 302, "{}", reply.body);
    assert_eq!(reply.header("location"), Some("/p?a=1&b=2"));

    // Names that only look like it are not our parameter: no credential at all.
    for target in [
        format!("/p?ACCESS_TOKEN={good}"),
        format!("/p?%2561ccess_token={good}"),
        format!("/p?access_token%00={good}"),
        format!("/p?access-token={good}"),
        format!("/p??access_token={good}"),
        format!("/p?x=1;access_token={good}"),
    ] {
        let reply = stack.get(&host, &target, &[]).await;
        assert_invalid_token(reply.status, &reply.body, &target);
    }
    assert_eq!(forwarded(&stack).await, cases.len());
    assert_still_answering(&stack).await;
}

#[tokio::test]
async fn tokens_anywhere_but_the_three_sources_are_not_credentials() {
    let stack = Stack::start().await;
    let host = stack.host(3000);
    let port = stack.envoy.port;
    let good = stack.token(None);
    // Envoy's access log records paths (without the query) as sent, so this token, put in a
    // path or a fragment where it is no credential, shows up there like any path would.
    support::allow_in_logs(&good);

    // Fragments never leave a browser; a raw client sending one gets 400 from Envoy.
    for target in [
        format!("/x#access_token={good}"),
        format!("/x?a=1#access_token={good}"),
        format!("/x#?access_token={good}"),
    ] {
        let reply = raw(port, raw_get(&target, &host, &[])).await;
        assert_eq!(reply.status, 400, "{target}: {}", reply.body);
    }
    // In the path, in other headers, with another scheme.
    for target in [
        format!("/access_token={good}/x"),
        format!("/access_token/{good}"),
        format!("/x;access_token={good}"),
        format!("/x%3Faccess_token={good}"),
    ] {
        let reply = stack.get(&host, &target, &[]).await;
        assert_invalid_token(reply.status, &reply.body, &target);
    }
    for (name, value) in [
        ("x-access-token", good.clone()),
        ("proxy-authorization", bearer(&good)),
        ("authorization", good.clone()),
        ("authorization", format!("Token {good}")),
        ("authorization", format!("Bearer{good}")),
        ("x-daytona-preview-token", good.clone()),
        ("cookie", format!("access_token={good}")),
        ("cookie", format!("DAYTONA_AUTHZ={good}")),
    ] {
        let reply = stack.get(&host, "/", &[(name, &value)]).await;
        assert_invalid_token(reply.status, &reply.body, &format!("{name}: {value}"));
    }
    assert_eq!(forwarded(&stack).await, 0);
    assert_eq!(stack.double.api_calls().await, 0);
    assert_still_answering(&stack).await;
}

#[tokio::test]
async fn header_names_in_any_case_are_understood_and_client_daytona_headers_never_pass() {
    let stack = Stack::start().await;
    let host = stack.host(3000);
    let port = stack.envoy.port;
    let good = stack.token(None);
    let real_preview_token = stack.double.sandbox.token.clone();
    let spoofed = [
        ("X-DAYTONA-PREVIEW-TOKEN", "spoofed-token"),
        ("x-DaYtOnA-sKiP-pReViEw-WaRnInG", "false"),
        ("X-Daytona-Disable-CORS", "true"),
        ("X-DAYTONA-AUTHZ-UPSTREAM", "127.0.0.1:1"),
        ("x-daytona-authz-upstream-SCHEME", "https"),
        ("X-Daytona-Whatever", "x"),
    ];
    let cookie = format!("app=1; daytona_authz={good}");
    let query_target = format!("/?access_token={good}");
    // The same spoofed headers on a request authorised each way, header names in odd cases.
    let auth = bearer(&good);
    type Variant<'a> = (&'a str, String, Vec<(&'a str, &'a str)>);
    let variants: [Variant; 4] = [
        ("AUTHORIZATION", "/".into(), vec![("AUTHORIZATION", &auth)]),
        ("aUtHoRiZaTiOn", "/".into(), vec![("aUtHoRiZaTiOn", &auth)]),
        ("COOKIE", "/".into(), vec![("COOKIE", &cookie)]),
        ("query", query_target.clone(), vec![]),
    ];
    for (name, target, auth) in &variants {
        let mut headers = auth.clone();
        headers.extend_from_slice(&spoofed);
        // Repeated, too.
        headers.push(("x-daytona-preview-token", "second-spoof"));
        let reply = raw(port, raw_get(target, &host, &headers)).await;
        assert_eq!(reply.status, 200, "{name}: {}", reply.body);
        let received = stack.double.proxy_requests().await;
        let request = received.last().unwrap();
        assert_eq!(
            request.values("x-daytona-preview-token"),
            [real_preview_token.as_str()],
            "{name}"
        );
        assert_eq!(
            request.values("x-daytona-skip-preview-warning"),
            ["true"],
            "{name}"
        );
        for header in [
            "x-daytona-disable-cors",
            "x-daytona-authz-upstream",
            "x-daytona-authz-upstream-scheme",
            "x-daytona-whatever",
            "authorization",
        ] {
            assert!(
                request.values(header).is_empty(),
                "{name}: {header} upstream: {request:?}"
            );
        }
        assert!(
            request
                .values("cookie")
                .iter()
                .all(|c| !c.contains("daytona_authz")),
            "{name}: {request:?}"
        );
        assert!(!request.path.contains("access_token"), "{name}");
    }
    // An underscore spelling (`x_daytona_preview_token`) could alias the real header in some
    // servers: Envoy rejects the request (headers_with_underscores_action: REJECT_REQUEST).
    let before = forwarded(&stack).await;
    let reply = raw(
        port,
        raw_get(
            "/",
            &host,
            &[
                ("x_daytona_preview_token", "spoofed"),
                ("Authorization", &bearer(&good)),
            ],
        ),
    )
    .await;
    assert_eq!(reply.status, 400, "{}", reply.body);
    assert_eq!(forwarded(&stack).await, before);
    assert_still_answering(&stack).await;
}

#[tokio::test]
async fn our_cookie_twice_or_in_two_cookie_headers() {
    let stack = Stack::start().await;
    let host = stack.host(3000);
    let port = stack.envoy.port;
    let good = stack.token(None);
    let for_other = token_for(OTHER_SANDBOX, None, now() + 600);
    let expired = token_for(stack.sandbox_id(), None, now() - 3600);

    // Several copies in one header (e.g. one tossed in by a sibling subdomain): the copy that
    // grants this sandbox wins, and none of them reaches the sandbox.
    for cookie in [
        format!("daytona_authz={for_other}; theme=dark; daytona_authz={good}"),
        format!("daytona_authz={good}; theme=dark; daytona_authz={expired}"),
        format!("daytona_authz=garbage; theme=dark; daytona_authz=\"{good}\""),
    ] {
        let reply = stack.get(&host, "/", &[("cookie", &cookie)]).await;
        assert_eq!(reply.status, 200, "{cookie}: {}", reply.body);
        assert_eq!(echoed_headers(&reply)["cookie"], ["theme=dark"], "{cookie}");
    }
    // Two Cookie headers (HTTP/1.1 clients can send them; Envoy joins them with "; ").
    let reply = raw(
        port,
        raw_get(
            "/",
            &host,
            &[
                ("Cookie", &format!("theme=dark; daytona_authz={good}")),
                ("Cookie", &format!("daytona_authz={for_other}; session=1")),
            ],
        ),
    )
    .await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    let received = stack.double.proxy_requests().await;
    assert_eq!(
        received.last().unwrap().values("cookie"),
        ["theme=dark; session=1"]
    );
    let reply = stack
        .get(
            &host,
            "/",
            &[
                ("cookie", &format!("daytona_authz={good}")),
                ("cookie", "a=1"),
            ],
        )
        .await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    assert_eq!(echoed_headers(&reply)["cookie"], ["a=1"]);

    // Only copies that cannot grant this sandbox: refused, nothing forwarded.
    let before = forwarded(&stack).await;
    let reply = stack
        .get(
            &host,
            "/",
            &[
                ("cookie", &format!("daytona_authz={for_other}")),
                ("cookie", &format!("daytona_authz={expired}")),
            ],
        )
        .await;
    // The first copy's reason is the answer: another sandbox's token.
    assert_eq!(reply.status, 403, "{}", reply.body);
    // Five copies are not a browser being unlucky: refused as ambiguous, and our cookie cleared.
    // (A sibling sandbox able to toss four cookies onto the parent domain can lock a user out
    // this way; see SECURITY.md, "__Host-" cookie names.)
    let five = format!(
        "daytona_authz=a; daytona_authz=b; daytona_authz=c; daytona_authz=d; daytona_authz={good}"
    );
    let reply = stack.get(&host, "/", &[("cookie", &five)]).await;
    assert_invalid_token(reply.status, &reply.body, "five copies");
    assert_eq!(
        reply.header("set-cookie"),
        Some("daytona_authz=; Max-Age=0; Path=/; HttpOnly; SameSite=Lax")
    );
    assert_eq!(forwarded(&stack).await, before);
    assert_still_answering(&stack).await;
}

#[tokio::test]
async fn forwarded_host_headers_cannot_change_which_sandbox_is_authorised() {
    let stack = Stack::start().await;
    let id = stack.sandbox_id().to_owned();
    let host = stack.host(3000);
    let other = stack.double.create_sandbox().await.id;
    let other_host = host_for(&other, 3000);
    let forwarded_header = format!("host={other_host};proto=https");
    let spoofs = [
        ("x-forwarded-host", other_host.as_str()),
        ("x-original-host", other_host.as_str()),
        ("x-host", other_host.as_str()),
        ("x-forwarded-server", other_host.as_str()),
        ("forwarded", forwarded_header.as_str()),
        ("x-envoy-original-host", other_host.as_str()),
    ];
    // A token for our sandbox on our host, the spoofed headers naming the other one: our sandbox,
    // and X-Forwarded-Host upstream is the real public host.
    let mut headers = spoofs.to_vec();
    let auth = bearer(&stack.token(None));
    headers.push(("authorization", &auth));
    let reply = stack.get(&host, "/", &headers).await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    assert_eq!(reply.json()["sandbox_id"], id);
    let received = stack.double.proxy_requests().await;
    assert_eq!(received[0].host, upstream_host(&stack, &id));
    assert_eq!(received[0].values("x-forwarded-host"), [host.as_str()]);

    // A token for the other sandbox, presented on our host with the spoofed headers naming the
    // other: 403, the host decides.
    let mut headers = spoofs.to_vec();
    let other_auth = bearer(&token_for(&other, None, now() + 600));
    headers.push(("authorization", &other_auth));
    let reply = stack.get(&host, "/", &headers).await;
    assert_eq!(reply.status, 403, "{}", reply.body);
    assert_only_reached(&stack, &id).await;
    assert_still_answering(&stack).await;
}

// ---------------------------------------------------------------------------------------------
// 3. Host games

#[tokio::test]
async fn no_host_trick_reaches_another_sandbox() {
    let stack = Stack::start().await;
    let id = stack.sandbox_id().to_owned();
    let host = stack.host(3000);
    let port = stack.envoy.port;
    // A second sandbox the double would serve, so a confused decision would be visible.
    let other = stack.double.create_sandbox().await.id;
    let other_host = host_for(&other, 3000);
    let auth = bearer(&stack.token(None));
    let upper_id = id.to_ascii_uppercase();

    // (Host, status) with a token for our sandbox, through reqwest.
    let cases: Vec<(String, u16)> = vec![
        // Parsed to the one right sandbox.
        (host.to_ascii_uppercase(), 200),
        (format!("3000-{upper_id}.Preview.Test"), 200),
        (format!("{host}:8080"), 200),
        (format!("{host}:443"), 200),
        // Refused.
        (format!("{host}."), 400),
        (format!("{host}.:8080"), 400),
        (format!("3000-{id}.{PREVIEW_DOMAIN}.evil.com:8080"), 400),
        (format!("3000-{id}.evil.com"), 400),
        (format!("3000-{id}.x.{PREVIEW_DOMAIN}"), 400),
        (format!("3000-{id}.x{PREVIEW_DOMAIN}"), 400),
        (format!("xn--3000-{id}.{PREVIEW_DOMAIN}"), 400),
        (format!("3000-{id}.xn--prview-cva.test"), 400),
        (format!("xn--80ak6aa92e.{PREVIEW_DOMAIN}"), 400),
        (format!("+3000-{id}.{PREVIEW_DOMAIN}"), 400),
        (format!("3000-{id}-x.{PREVIEW_DOMAIN}"), 400),
        (format!("3000-{id}x.{PREVIEW_DOMAIN}"), 400),
        (format!("3000--{id}.{PREVIEW_DOMAIN}"), 400),
        (
            format!("3000-{}.{PREVIEW_DOMAIN}", id.replace('-', "")),
            400,
        ),
        (format!("3000{id}.{PREVIEW_DOMAIN}"), 400),
        (format!("-{id}.{PREVIEW_DOMAIN}"), 400),
        (format!("3000-.{PREVIEW_DOMAIN}"), 400),
        (format!(".{PREVIEW_DOMAIN}"), 400),
        (format!("{host}:"), 400),
        (format!("{host}:abc"), 400),
        (format!("{host}:80:80"), 400),
        (format!("{host}:+80"), 400),
        ("127.0.0.1:8080".into(), 400),
        ("[::1]".into(), 400),
        ("[::1]:8080".into(), 400),
        ("2130706433".into(), 400),
        ("localhost".into(), 400),
        // A token for our sandbox on the other sandbox's host.
        (other_host.clone(), 403),
        (other_host.to_ascii_uppercase(), 403),
        (format!("{other_host}:8080"), 403),
    ];
    for (case_host, want) in &cases {
        let reply = stack.get(case_host, "/", &[("authorization", &auth)]).await;
        assert_eq!(reply.status, *want, "{case_host}: {}", reply.body);
        match want {
            200 => assert_eq!(reply.json()["sandbox_id"], id, "{case_host}"),
            400 => assert_eq!(reply.json()["error"], "invalid_host", "{case_host}"),
            _ => assert_eq!(reply.json()["error"], "insufficient_scope", "{case_host}"),
        }
    }

    // Requests reqwest will not make, as raw HTTP/1.1.
    let raw_cases: Vec<(&str, Vec<u8>, u16)> = vec![
        // Absolute form: the target's authority wins over Host (for Envoy and for us), so the
        // decision and the forwarding agree on one sandbox.
        (
            "absolute-form naming the other sandbox, Host ours",
            format!("GET http://{other_host}/ HTTP/1.1\r\nHost: {host}\r\nAuthorization: {auth}\r\nConnection: close\r\n\r\n").into_bytes(),
            403,
        ),
        (
            "absolute-form naming ours, Host the other sandbox",
            format!("GET http://{host}/ HTTP/1.1\r\nHost: {other_host}\r\nAuthorization: {auth}\r\nConnection: close\r\n\r\n").into_bytes(),
            200,
        ),
        (
            "absolute-form with userinfo ours@other",
            format!("GET http://{host}@{other_host}/ HTTP/1.1\r\nHost: {host}\r\nAuthorization: {auth}\r\nConnection: close\r\n\r\n").into_bytes(),
            403,
        ),
        // Two Host headers: Envoy joins them, which is no host of ours.
        (
            "Host ours, then Host other",
            format!("GET / HTTP/1.1\r\nHost: {host}\r\nHost: {other_host}\r\nAuthorization: {auth}\r\nConnection: close\r\n\r\n").into_bytes(),
            400,
        ),
        (
            "Host other, then Host ours",
            format!("GET / HTTP/1.1\r\nHost: {other_host}\r\nHost: {host}\r\nAuthorization: {auth}\r\nConnection: close\r\n\r\n").into_bytes(),
            400,
        ),
        (
            "Host with userinfo",
            format!("GET / HTTP/1.1\r\nHost: x@{host}\r\nAuthorization: {auth}\r\nConnection: close\r\n\r\n").into_bytes(),
            400,
        ),
        // Non-ASCII hosts (IDN as UTF-8, a Cyrillic look-alike in the id): Envoy refuses them.
        (
            "IDN domain as UTF-8",
            format!("GET / HTTP/1.1\r\nHost: 3000-{id}.pr\u{e9}view.test\r\nAuthorization: {auth}\r\nConnection: close\r\n\r\n").into_bytes(),
            400,
        ),
        (
            "Cyrillic a for the id's first digit",
            format!("GET / HTTP/1.1\r\nHost: 3000-\u{430}{}.{PREVIEW_DOMAIN}\r\nAuthorization: {auth}\r\nConnection: close\r\n\r\n", &id[1..]).into_bytes(),
            400,
        ),
        (
            "fullwidth port digits",
            format!("GET / HTTP/1.1\r\nHost: \u{ff13}000-{id}.{PREVIEW_DOMAIN}\r\nAuthorization: {auth}\r\nConnection: close\r\n\r\n").into_bytes(),
            400,
        ),
        // No Host at all: HTTP/1.1 without Host, and HTTP/1.0 (Envoy wants 1.1: 426).
        (
            "HTTP/1.1 without Host",
            format!("GET / HTTP/1.1\r\nAuthorization: {auth}\r\nConnection: close\r\n\r\n").into_bytes(),
            400,
        ),
        (
            "HTTP/1.0 without Host",
            format!("GET / HTTP/1.0\r\nAuthorization: {auth}\r\n\r\n").into_bytes(),
            426,
        ),
        // CONNECT to the other sandbox: no route for CONNECT.
        (
            "CONNECT other:443",
            format!("CONNECT {other_host}:443 HTTP/1.1\r\nHost: {other_host}:443\r\nAuthorization: {auth}\r\n\r\n").into_bytes(),
            404,
        ),
    ];
    for (name, request, want) in &raw_cases {
        let reply = raw(port, request).await;
        assert_eq!(reply.status, *want, "{name}: {}", reply.body);
        match want {
            200 => assert_eq!(reply.json()["sandbox_id"], id, "{name}"),
            // daytona-authz's own refusal (not Envoy's): it judged the other sandbox's host.
            403 => assert!(
                reply
                    .header("www-authenticate")
                    .is_some_and(|v| v.contains("insufficient_scope")),
                "{name}: {reply:?}"
            ),
            _ => {}
        }
    }

    // An https absolute-form target on this plain-HTTP listener: Envoy itself refuses it (403,
    // before ext_authz), for either sandbox.
    for target_host in [&other_host, &host] {
        let request = format!(
            "GET https://{target_host}:443/x HTTP/1.1\r\nHost: {host}\r\nAuthorization: {auth}\r\nConnection: close\r\n\r\n"
        );
        let reply = raw(port, request).await;
        assert_eq!(reply.status, 403, "https://{target_host}: {}", reply.body);
    }

    // Whatever happened above, the other sandbox was never reached, and ours was.
    assert_only_reached(&stack, &id).await;
    assert_eq!(forwarded(&stack).await, 5);
    assert_still_answering(&stack).await;
}

// ---------------------------------------------------------------------------------------------
// 4. Other sandboxes are untrusted too

/// A page served by sandbox B runs in the user's browser. Preview hosts of one domain are one
/// *site*, so the user's `SameSite=Lax` cookie for sandbox A goes along with B's
/// `fetch(A, {credentials: "include"})`; Daytona's proxy reflects any `Origin` with credentials
/// (unless `--disable-cors`), so B's page can read A's responses as that user.
#[tokio::test]
async fn a_sibling_sandbox_page_cannot_read_another_sandbox_with_the_users_cookie() {
    let stack = Stack::start().await;
    let host = stack.host(3000);
    let evil = stack.double.create_sandbox().await.id;
    let evil_origin = format!("http://{}:{}", host_for(&evil, 3000), stack.envoy.port);
    let cookie = format!("daytona_authz={}", stack.token(None));
    // What the browser sends for B's `fetch("http://<A>/secret", {credentials: "include"})`.
    let reply = stack
        .get(
            &host,
            "/secret",
            &[
                ("cookie", &cookie),
                ("origin", &evil_origin),
                ("sec-fetch-site", "same-site"),
                ("sec-fetch-mode", "cors"),
            ],
        )
        .await;
    let readable = reply.status == 200
        && reply.header("access-control-allow-origin") == Some(evil_origin.as_str())
        && reply.header("access-control-allow-credentials") == Some("true");
    assert!(
        !readable,
        "sandbox {evil}'s page may read sandbox {}'s answer: {} {:?}",
        stack.sandbox_id(),
        reply.status,
        reply.headers
    );
}

#[tokio::test]
async fn the_cookie_works_only_for_navigations_and_the_sandboxs_own_pages() {
    let stack = Stack::start().await;
    let host = stack.host(3000);
    let sibling = stack.double.create_sandbox().await.id;
    let port = stack.envoy.port;
    let own_origin = format!("http://{}:{port}", stack.host(8080));
    let sibling_origin = format!("http://{}:{port}", host_for(&sibling, 3000));
    let same_site = format!("http://evil.{PREVIEW_DOMAIN}:{port}");
    let sibling_page = format!("{sibling_origin}/page");
    let cookie = format!("daytona_authz={}", stack.token(None));
    let get = |headers: Vec<(&'static str, String)>| {
        let stack = &stack;
        let host = host.clone();
        let cookie = cookie.clone();
        async move {
            let mut all: Vec<(&str, &str)> =
                headers.iter().map(|(n, v)| (*n, v.as_str())).collect();
            all.push(("cookie", &cookie));
            stack.get(&host, "/secret", &all).await
        }
    };
    let refused: Vec<Vec<(&'static str, String)>> = vec![
        // A page of another origin followed a redirect to us: the browser says `null`.
        vec![("origin", "null".into()), ("sec-fetch-mode", "cors".into())],
        vec![
            ("origin", sibling_origin.clone()),
            ("sec-fetch-site", "same-site".into()),
        ],
        vec![
            ("origin", same_site.clone()),
            ("sec-fetch-site", "same-site".into()),
        ],
        // `<script src>` / `<img>` of another page of the site.
        vec![
            ("sec-fetch-site", "same-site".into()),
            ("sec-fetch-mode", "no-cors".into()),
        ],
        vec![
            ("sec-fetch-site", "cross-site".into()),
            ("sec-fetch-dest", "script".into()),
        ],
        // A browser without Fetch Metadata (plain HTTP) whose Referer names a sibling.
        vec![("referer", sibling_page.clone())],
    ];
    for headers in refused {
        let reply = get(headers.clone()).await;
        assert_eq!(reply.status, 403, "{headers:?}: {}", reply.body);
        assert_eq!(reply.header("access-control-allow-origin"), None);
    }
    assert_eq!(
        forwarded(&stack).await,
        0,
        "a refused request reached the sandbox"
    );
    let accepted: Vec<Vec<(&'static str, String)>> = vec![
        vec![
            ("sec-fetch-mode", "navigate".into()),
            ("sec-fetch-site", "cross-site".into()),
        ],
        vec![
            ("origin", own_origin.clone()),
            ("sec-fetch-site", "same-site".into()),
        ],
        vec![
            ("sec-fetch-site", "same-origin".into()),
            ("sec-fetch-mode", "no-cors".into()),
        ],
        vec![],
    ];
    let count = accepted.len();
    for headers in accepted {
        let reply = get(headers.clone()).await;
        assert_eq!(reply.status, 200, "{headers:?}: {}", reply.body);
    }
    assert_eq!(forwarded(&stack).await, count);
    // Another page cannot sign the user out either: a bad `?access_token=` beside the user's
    // good cookie (`<img src="…?access_token=x">`) is refused without clearing the cookie.
    let reply = stack
        .get(&host, "/?access_token=x", &[("cookie", &cookie)])
        .await;
    assert_eq!(reply.status, 401, "{}", reply.body);
    assert_eq!(reply.header("set-cookie"), None);
    // A Bearer token is explicit: where the request came from does not matter.
    let auth = bearer(&stack.token(None));
    let reply = stack
        .get(&host, "/", &[("authorization", &auth), ("origin", "null")])
        .await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    assert_only_reached(&stack, stack.sandbox_id()).await;
    assert_still_answering(&stack).await;
}

#[tokio::test]
async fn our_token_never_reaches_the_app_in_an_authorization_header_we_cannot_read() {
    let stack = Stack::start().await;
    let token = stack.token(None);
    let cookie = format!("daytona_authz={token}");
    for value in [
        format!("Basic dXNlcjpwdw==,Bearer {token}"),
        format!("Bearer\t{token}"),
        format!("Bearer {token} x"),
        format!("Bearer,{token}"),
        format!("Token {token}"),
    ] {
        let reply = stack
            .get(
                &stack.host(3000),
                "/",
                &[("authorization", &value), ("cookie", &cookie)],
            )
            .await;
        assert_invalid_token(reply.status, &reply.body, &format!("{value:?}"));
    }
    assert_eq!(forwarded(&stack).await, 0);
    // The app's own Basic credentials beside our cookie still reach it, untouched.
    let reply = stack
        .get(
            &stack.host(3000),
            "/",
            &[("authorization", "Basic dXNlcjpwdw=="), ("cookie", &cookie)],
        )
        .await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    assert_eq!(
        echoed_headers(&reply)["authorization"],
        ["Basic dXNlcjpwdw=="]
    );
    assert_still_answering(&stack).await;
}

#[tokio::test]
async fn path_and_query_reach_the_app_byte_for_byte() {
    let stack = Stack::start().await;
    let token = stack.token(None);
    let auth = bearer(&token);
    // Without a token in the query: exactly as sent. (An encoded slash in the path itself gets
    // Envoy's redirect to the decoded path instead: policy::an_encoded_slash_cannot_carry_*.)
    for target in [
        "/?z=1&a=2&z=3",
        "/p?a",
        "/?&&a=1",
        "/sig?b=%2F+x&a=%7e&b=1;c",
        "/p/%252Fq%20r?x=%41",
    ] {
        let reply = stack
            .get(&stack.host(3000), target, &[("authorization", &auth)])
            .await;
        assert_eq!(reply.status, 200, "{target}: {}", reply.body);
        assert_eq!(reply.json()["path"], target);
    }
    // With one: only that pair goes, whatever its spelling; everything else keeps its bytes.
    for (target, seen) in [
        (format!("/?z=1&access_token={token}&a&&z=3"), "/?z=1&a&&z=3"),
        (format!("/p?%61ccess_token={token}&b=%2F+x"), "/p?b=%2F+x"),
        (format!("/p?access_token={token}"), "/p"),
    ] {
        let reply = stack.get(&stack.host(3000), &target, &[]).await;
        assert_eq!(reply.status, 200, "{target}: {}", reply.body);
        assert_eq!(reply.json()["path"], seen, "{target}");
    }
    assert_still_answering(&stack).await;
}

#[tokio::test]
async fn client_x_envoy_headers_never_reach_the_app() {
    let stack = Stack::start().await;
    let auth = bearer(&stack.token(None));
    let reply = stack
        .get(
            &stack.host(3000),
            "/",
            &[
                ("authorization", &auth),
                ("x-envoy-foo", "1"),
                ("X-Envoy-Original-Path", "/admin"),
                ("x-envoy-retry-on", "5xx"),
                ("x-app", "kept"),
            ],
        )
        .await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    let headers = echoed_headers(&reply);
    let envoys: Vec<&String> = headers
        .keys()
        .filter(|n| n.starts_with("x-envoy-"))
        .collect();
    assert!(envoys.is_empty(), "{envoys:?} reached the app");
    assert_eq!(headers["x-app"], ["kept"]);
}

#[tokio::test]
async fn a_host_port_suffix_outside_1_to_65535_is_refused() {
    let stack = Stack::start().await;
    let token = stack.token(None);
    let auth = format!("Bearer {token}");
    for suffix in [":99999", ":65536", ":0"] {
        let host = format!("{}{suffix}", stack.host(3000));
        let reply = raw(
            stack.envoy.port,
            raw_get("/", &host, &[("authorization", &auth)]),
        )
        .await;
        assert_eq!(reply.status, 400, "{host}: {}", reply.body);
    }
    let host = format!("{}:65535", stack.host(3000));
    let reply = raw(
        stack.envoy.port,
        raw_get("/", &host, &[("authorization", &auth)]),
    )
    .await;
    assert_eq!(reply.status, 200, "{host}: {}", reply.body);
    assert_eq!(forwarded(&stack).await, 1);
}

// ---------------------------------------------------------------------------------------------
// 5. Faults

#[tokio::test]
async fn unusable_daytona_answers_are_502_never_cached_and_never_forwarded() {
    let api = FakeDaytonaApi::start().await;
    let stack = Stack::start_with(AuthzOptions {
        api_url: Some(api.url()),
        ..Default::default()
    })
    .await;
    let id = stack.sandbox_id().to_owned();
    let host = stack.host(3000);
    let auth = bearer(&stack.token(None));
    let proxy_port = stack.double.proxy_port;
    let good_url = format!("http://3000-{id}.proxy.localhost:{proxy_port}");
    let token = stack.double.sandbox.token.clone();
    let answer = |url: &str, token: &str| json!({ "sandboxId": id, "url": url, "token": token });

    // (case, status, content type, body)
    let cases: Vec<(&str, u16, &'static str, Vec<u8>)> = vec![
        (
            "malformed JSON",
            200,
            "application/json",
            br#"{"url": "#.to_vec(),
        ),
        ("empty body", 200, "application/json", Vec::new()),
        (
            "HTML",
            200,
            "text/html",
            b"<html>maintenance</html>".to_vec(),
        ),
        ("JSON null", 200, "application/json", b"null".to_vec()),
        ("empty object", 200, "application/json", b"{}".to_vec()),
        (
            "empty token",
            200,
            "application/json",
            answer(&good_url, "").to_string().into_bytes(),
        ),
        (
            "token with CRLF",
            200,
            "application/json",
            answer(&good_url, "a\r\nx-evil: 1").to_string().into_bytes(),
        ),
        (
            "token with a space",
            200,
            "application/json",
            answer(&good_url, "a b").to_string().into_bytes(),
        ),
        (
            "token as a number",
            200,
            "application/json",
            json!({ "url": good_url, "token": 42 })
                .to_string()
                .into_bytes(),
        ),
        (
            "token over 512 bytes",
            200,
            "application/json",
            answer(&good_url, &"t".repeat(600)).to_string().into_bytes(),
        ),
        (
            "answer over 64 KiB",
            200,
            "application/json",
            json!({ "url": good_url, "token": token, "pad": "p".repeat(70 * 1024) })
                .to_string()
                .into_bytes(),
        ),
        // SSRF: somewhere else than this sandbox port under an allowed proxy domain.
        (
            "URL to an IP",
            200,
            "application/json",
            answer(&format!("http://127.0.0.1:{proxy_port}"), &token)
                .to_string()
                .into_bytes(),
        ),
        (
            "URL to localhost",
            200,
            "application/json",
            answer(&format!("http://localhost:{proxy_port}"), &token)
                .to_string()
                .into_bytes(),
        ),
        (
            "URL to another sandbox",
            200,
            "application/json",
            answer(
                &format!("http://3000-{OTHER_SANDBOX}.proxy.localhost:{proxy_port}"),
                &token,
            )
            .to_string()
            .into_bytes(),
        ),
        (
            "URL to another port",
            200,
            "application/json",
            answer(
                &format!("http://3001-{id}.proxy.localhost:{proxy_port}"),
                &token,
            )
            .to_string()
            .into_bytes(),
        ),
        (
            "URL with userinfo",
            200,
            "application/json",
            answer(
                &format!("http://u:p@3000-{id}.proxy.localhost:{proxy_port}"),
                &token,
            )
            .to_string()
            .into_bytes(),
        ),
        (
            "URL to another domain",
            200,
            "application/json",
            answer(
                &format!("http://3000-{id}.proxy.evil.test:{proxy_port}"),
                &token,
            )
            .to_string()
            .into_bytes(),
        ),
        (
            "file URL",
            200,
            "application/json",
            answer(&format!("file:///3000-{id}.proxy.localhost"), &token)
                .to_string()
                .into_bytes(),
        ),
        (
            "URL that does not parse",
            200,
            "application/json",
            answer("http://[::1", &token).to_string().into_bytes(),
        ),
    ];
    for (name, status, content_type, body) in &cases {
        api.answer(*status, content_type, body.clone());
        let calls = api.calls();
        let reply = stack.get(&host, "/", &[("authorization", &auth)]).await;
        assert_eq!(reply.status, 502, "{name}: {}", reply.body);
        assert_eq!(reply.json()["error"], "bad_gateway", "{name}");
        assert_eq!(api.calls(), calls + 1, "{name}: the failure was cached");
    }
    assert_eq!(
        forwarded(&stack).await,
        0,
        "an unusable answer was forwarded"
    );

    // Once Daytona answers properly, the very next request goes through.
    api.answer_json(&answer(&good_url, &token));
    let reply = stack.get(&host, "/", &[("authorization", &auth)]).await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    assert_only_reached(&stack, &id).await;
    let logs = stack.authz.proc.stderr();
    assert!(!logs.contains("panicked"), "{logs}");
    assert!(!logs.contains(&token), "a preview token was logged");
}

/// The SSRF allow-list pins the host name but not the TCP port: an answer naming this very
/// sandbox under an allowed domain, with any port, is forwarded there. On a local set-up that is
/// any loopback service (here: Envoy's own admin interface, which can drain or quit Envoy).
#[tokio::test]
async fn a_preview_url_on_an_unexpected_port_is_never_forwarded() {
    let api = FakeDaytonaApi::start().await;
    let stack = Stack::start_with(AuthzOptions {
        api_url: Some(api.url()),
        ..Default::default()
    })
    .await;
    let id = stack.sandbox_id().to_owned();
    let admin_port = stack.envoy.admin.rsplit(':').next().unwrap().to_owned();
    api.answer_json(&json!({
        "sandboxId": id,
        "url": format!("http://3000-{id}.proxy.localhost:{admin_port}"),
        "token": "t",
    }));
    let reply = stack
        .get(
            &stack.host(3000),
            "/",
            &[("authorization", &bearer(&stack.token(None)))],
        )
        .await;
    assert!(
        !reply.body.to_ascii_lowercase().contains("envoy admin"),
        "the request reached Envoy's admin interface"
    );
    assert_eq!(reply.status, 502, "{}", reply.body);
}

/// One request's outcome under load.
#[derive(Debug, Clone, Copy)]
struct Sample {
    sent: Instant,
    done: Instant,
    status: u16,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn authz_killed_and_restarted_on_the_same_port_under_load() {
    let grpc_port = support::free_port();
    let options = AuthzOptions {
        extra_args: vec!["--grpc-addr".into(), format!("127.0.0.1:{grpc_port}")],
        ..Default::default()
    };
    let mut stack = Stack::start_with(options.clone()).await;
    assert_eq!(stack.authz.grpc_addr, format!("127.0.0.1:{grpc_port}"));
    let envoy_pid = stack.envoy.proc.pid();

    // Light load: two clients, each a request every 25 ms, until told to stop.
    let samples: Arc<Mutex<Vec<Sample>>> = Arc::default();
    let stop = Arc::new(AtomicBool::new(false));
    let url = format!("http://127.0.0.1:{}/", stack.envoy.port);
    let host = stack.host(3000);
    let auth = bearer(&stack.token(None));
    let loaders: Vec<_> = (0..2)
        .map(|_| {
            let (samples, stop) = (Arc::clone(&samples), Arc::clone(&stop));
            let (url, host, auth) = (url.clone(), host.clone(), auth.clone());
            tokio::spawn(async move {
                let http = reqwest::Client::builder()
                    .timeout(Duration::from_secs(10))
                    .build()
                    .unwrap();
                while !stop.load(Ordering::SeqCst) {
                    let sent = Instant::now();
                    let status = match http
                        .get(&url)
                        .header("host", &host)
                        .header("authorization", &auth)
                        .send()
                        .await
                    {
                        Ok(response) => response.status().as_u16(),
                        Err(_) => 0,
                    };
                    let done = Instant::now();
                    samples.lock().unwrap().push(Sample { sent, done, status });
                    tokio::time::sleep(Duration::from_millis(25)).await;
                }
            })
        })
        .collect();
    let count_ok = || {
        samples
            .lock()
            .unwrap()
            .iter()
            .filter(|s| s.status == 200)
            .count()
    };
    support::eventually("traffic flowing", Duration::from_secs(10), || {
        let ok = count_ok() >= 10;
        async move { ok.then_some(()) }
    })
    .await;

    // Kill it (SIGKILL: no drain), and watch Envoy fail closed.
    stack.authz.proc.kill();
    let killed = Instant::now();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let forwarded_after_kill = forwarded(&stack).await;
    // Long enough for Envoy's active health check (every 2 s, 2 failures) to eject it too, so
    // the recovery below also proves it is re-admitted without an Envoy restart.
    support::eventually(
        "Envoy to mark daytona-authz unhealthy",
        Duration::from_secs(15),
        || async {
            (stack
                .envoy
                .stat("cluster.daytona_authz.membership_healthy")
                .await
                == 0)
                .then_some(())
        },
    )
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        forwarded(&stack).await,
        forwarded_after_kill,
        "requests were forwarded while daytona-authz was down"
    );

    // Same port, same Envoy.
    let restarting = Instant::now();
    let mut options = options;
    options
        .extra_args
        .extend(stack.double.upstream_domain_args());
    stack.authz = Authz::start(&stack.double.api_url, &options).await;
    assert_eq!(stack.authz.grpc_addr, format!("127.0.0.1:{grpc_port}"));
    let recovered = support::eventually(
        "Envoy to use the restarted daytona-authz",
        Duration::from_secs(20),
        || {
            let first = samples
                .lock()
                .unwrap()
                .iter()
                .filter(|s| s.sent > restarting && s.status == 200)
                .map(|s| s.done)
                .min();
            async move { first }
        },
    )
    .await;
    tokio::time::sleep(Duration::from_millis(750)).await;
    stop.store(true, Ordering::SeqCst);
    assert_eq!(
        stack
            .envoy
            .stat("cluster.daytona_authz.membership_healthy")
            .await,
        1
    );
    for loader in loaders {
        loader.await.unwrap();
    }

    let samples = samples.lock().unwrap().clone();
    for sample in &samples {
        assert!(
            matches!(sample.status, 200 | 503),
            "unexpected status under restart: {sample:?}"
        );
    }
    let outage: Vec<&Sample> = samples
        .iter()
        .filter(|s| s.sent >= killed && s.done <= restarting)
        .collect();
    assert!(
        outage.len() >= 10,
        "too few requests during the outage: {}",
        outage.len()
    );
    assert!(
        outage.iter().all(|s| s.status == 503),
        "not 503 while daytona-authz was down: {outage:?}"
    );
    let after: Vec<&Sample> = samples
        .iter()
        .filter(|s| s.sent > recovered + Duration::from_millis(100))
        .collect();
    assert!(after.len() >= 5, "too few requests after recovery");
    assert!(
        after.iter().all(|s| s.status == 200),
        "not 200 after recovery: {after:?}"
    );
    assert_eq!(stack.envoy.proc.pid(), envoy_pid, "Envoy was not restarted");
    eprintln!(
        "authz restart: {} requests answered 503 during a {:?} outage; recovered {:?} after the restart began",
        outage.len(),
        restarting - killed,
        recovered - restarting
    );
    assert_still_answering(&stack).await;
}

/// An app's cookie holding a byte that is not UTF-8 (Latin-1 "café"): it passes untouched while
/// our cookie is not in its header; when ours is cut out beside it, the header is rewritten and
/// that byte arrives as U+FFFD, because Envoy's ext_authz takes a rewritten header as a protobuf
/// string (README, share links). Either way our token never arrives.
#[tokio::test]
async fn non_utf8_cookie_bytes_pass_untouched_unless_our_cookie_is_cut_out_beside_them() {
    let stack = Stack::start().await;
    let host = stack.host(3000);
    let good = stack.token(None);
    let latin1 = |request: Vec<u8>| -> Vec<u8> {
        let text = String::from_utf8(request).unwrap();
        let (before, after) = text.split_once("CAFE").expect("the marker");
        [before.as_bytes(), b"caf\xe9", after.as_bytes()].concat()
    };
    let last_cookie = || async {
        let received = stack.double.proxy_requests().await;
        let last = received.last().expect("a forwarded request");
        last.values("cookie").join(" | ")
    };

    let auth = bearer(&good);
    let headers = [
        ("Authorization", auth.as_str()),
        ("Cookie", "lang=CAFE; theme=dark"),
    ];
    let reply = raw(stack.envoy.port, latin1(raw_get("/", &host, &headers))).await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    assert_eq!(last_cookie().await, "lang=caf\\xe9; theme=dark");

    let cookie = format!("lang=CAFE; daytona_authz={good}; theme=dark");
    let reply = raw(
        stack.envoy.port,
        latin1(raw_get("/", &host, &[("Cookie", &cookie)])),
    )
    .await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    assert_eq!(last_cookie().await, "lang=caf\u{FFFD}; theme=dark");
}
