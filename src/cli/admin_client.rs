//! The command line's side of the admin API: `mint --admin-url` and `revoke` talk to a running
//! daytona-authz.

use super::CliError;
use crate::config::{AdminClientArgs, ConfigError, RevokeArgs};
use crate::identity::mint::{LinkRequest, Minted};
use crate::proto::admin as pb;
use crate::proto::admin::admin_client::AdminClient;

/// Adds the admin credential to every call.
type Credential =
    Box<dyn FnMut(tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> + Send>;
type Client = AdminClient<
    tonic::service::interceptor::InterceptedService<tonic::transport::Channel, Credential>,
>;

async fn connect(args: &AdminClientArgs) -> Result<Client, CliError> {
    let (url, token) = args.validate()?;
    let channel = tonic::transport::Endpoint::from_shared(url.clone())
        .map_err(|e| ConfigError(format!("--admin-url: {e}")))?
        .connect_timeout(std::time::Duration::from_secs(5))
        .timeout(std::time::Duration::from_secs(10))
        .connect()
        .await
        .map_err(|e| CliError::Unreachable {
            url: url.clone(),
            reason: e.to_string(),
        })?;
    let mut value: tonic::metadata::MetadataValue<tonic::metadata::Ascii> =
        format!("Bearer {}", token.expose())
            .parse()
            .map_err(|_| ConfigError("the admin token is not a valid header value".into()))?;
    value.set_sensitive(true);
    let add_credential: Credential = Box::new(move |mut request: tonic::Request<()>| {
        request
            .metadata_mut()
            .insert("authorization", value.clone());
        Ok(request)
    });
    Ok(AdminClient::with_interceptor(channel, add_credential))
}

fn block_on<T>(
    future: impl std::future::Future<Output = Result<T, CliError>>,
) -> Result<T, CliError> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(CliError::Runtime)?
        .block_on(future)
}

pub fn mint(args: &AdminClientArgs, request: &LinkRequest) -> Result<Minted, CliError> {
    block_on(async {
        let answer = connect(args)
            .await?
            .mint_link(pb::MintLinkRequest {
                sandbox_id: request.sandbox.clone(),
                ports: request.ports.iter().map(|p| u32::from(*p)).collect(),
                ttl_seconds: request.ttl.as_secs(),
                base_url: request.base_url.clone().unwrap_or_default(),
                any_port: request.any_port,
            })
            .await
            .map_err(CliError::Refused)?
            .into_inner();
        Ok(Minted {
            links: answer.links,
            token: answer.token,
            jti: answer.jti,
            expires_at: answer.expires_at,
        })
    })
}

/// Returns what to print.
pub fn revoke(args: &RevokeArgs) -> Result<String, CliError> {
    block_on(async {
        match (&args.jti, &args.sandbox, &args.subject) {
            (Some(jti), _, _) => {
                if let Some(at) = args.expires_at {
                    refuse_past_expiry(at, crate::authz::token::now())?;
                }
                let mut client = connect(&args.admin).await?;
                client
                    .revoke_token(pb::RevokeTokenRequest {
                        jti: jti.clone(),
                        expires_at: args.expires_at,
                    })
                    .await
                    .map_err(CliError::Refused)?;
                Ok(format!("revoked token {jti}\n"))
            }
            (None, Some(sandbox), _) => {
                connect(&args.admin)
                    .await?
                    .revoke_sandbox(pb::RevokeSandboxRequest {
                        sandbox_id: sandbox.clone(),
                        lift: args.lift,
                    })
                    .await
                    .map_err(CliError::Refused)?;
                Ok(if args.lift {
                    format!("lifted the revocation of sandbox {sandbox}\n")
                } else {
                    format!("revoked every token for sandbox {sandbox}\n")
                })
            }
            (None, None, Some(subject)) => {
                connect(&args.admin)
                    .await?
                    .revoke_subject(pb::RevokeSubjectRequest {
                        subject: subject.clone(),
                        lift: args.lift,
                    })
                    .await
                    .map_err(CliError::Refused)?;
                Ok(if args.lift {
                    format!("lifted the revocation of subject {subject}\n")
                } else {
                    format!("revoked every token of subject {subject}\n")
                })
            }
            (None, None, None) => {
                Err(ConfigError("give --jti, --sandbox or --subject".into()).into())
            }
        }
    })
}

/// A note for `revoke --subject` given what looks like an email address. `sub` is compared
/// exactly, and at Keycloak, Okta, Google and Entra ID it is an opaque id (Entra's differs per
/// application), so an email most likely matches no token. The revocation is still made as
/// given (printed after it succeeded): minted tokens, or another provider, may well carry an
/// email as `sub`.
pub fn subject_hint(args: &RevokeArgs) -> Option<String> {
    let subject = args.subject.as_deref().filter(|s| s.contains('@'))?;
    Some(format!(
        "note: {subject:?} looks like an email address, but --subject is compared exactly with \
         a token's `sub` claim, which at most identity providers (Keycloak, Okta, Google, Entra \
         ID) is an opaque id, so it may match no token. A person's `sub` is in the audit log \
         (its `sub` field) and on the provider's page for the user."
    ))
}

/// `--expires-at` in the past would revoke nothing (the server refuses it too): most likely
/// it is not the token's `exp`.
fn refuse_past_expiry(expires_at: u64, now: u64) -> Result<(), ConfigError> {
    if expires_at >= now {
        return Ok(());
    }
    let when = humantime::format_rfc3339_seconds(
        std::time::UNIX_EPOCH + std::time::Duration::from_secs(expires_at),
    );
    Err(ConfigError(format!(
        "--expires-at: {expires_at} ({when}) is in the past, so nothing would be revoked; give \
         the token's own exp (`mint` prints it), or leave --expires-at out to keep the \
         revocation for good"
    )))
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    #[test]
    fn expires_at_takes_unix_seconds_or_rfc3339() {
        let parse = |value: &str| {
            let argv = [
                "daytona-authz",
                "revoke",
                "--jti",
                "j",
                "--expires-at",
                value,
            ];
            match crate::config::Cli::try_parse_from(argv).map(|cli| cli.command) {
                Ok(crate::config::Command::Revoke(args)) => Ok(args.expires_at),
                Ok(_) => unreachable!(),
                Err(e) => Err(e.to_string()),
            }
        };
        assert_eq!(parse("1700000000"), Ok(Some(1_700_000_000)));
        assert_eq!(parse("2023-11-14T22:13:20Z"), Ok(Some(1_700_000_000)));
        assert!(parse("tomorrow").unwrap_err().contains("RFC 3339"));
        assert!(parse("-5").is_err());
    }

    #[test]
    fn an_email_as_subject_gets_a_note_and_an_opaque_sub_none() {
        let hint = |argv: &[&str]| {
            let argv = [&["daytona-authz", "revoke"], argv].concat();
            match crate::config::Cli::try_parse_from(argv).map(|cli| cli.command) {
                Ok(crate::config::Command::Revoke(args)) => super::subject_hint(&args),
                other => panic!("{other:?}"),
            }
        };
        let note = hint(&["--subject", "alice@example.com"]).expect("a note");
        assert!(note.contains("\"alice@example.com\""), "{note}");
        assert!(note.contains("audit log"), "{note}");
        assert!(hint(&["--subject", "alice@example.com", "--lift"]).is_some());
        assert_eq!(
            hint(&["--subject", "f3b1c2d4-5e6f-4a7b-8c9d-0e1f2a3b4c5d"]),
            None
        );
        assert_eq!(hint(&["--subject", "00u1abcdEFGH2345"]), None);
        assert_eq!(hint(&["--sandbox", "x@y"]), None);
    }

    #[test]
    fn an_expiry_in_the_past_is_refused_before_calling() {
        let refused = super::refuse_past_expiry(1_700_000_000, 1_700_000_001).unwrap_err();
        assert!(refused.to_string().contains("--expires-at"), "{refused}");
        assert!(
            refused.to_string().contains("2023-11-14T22:13:20Z"),
            "{refused}"
        );
        assert!(super::refuse_past_expiry(1_700_000_001, 1_700_000_001).is_ok());
    }
}
