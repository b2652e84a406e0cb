//! Logs and, with `--otlp-endpoint`, traces: one `tracing` subscriber for both.
//!
//! Logs are the events `RUST_LOG` lets through (default `info`), never spans. Spans (the Check
//! and the Daytona, JWKS, introspection and Redis calls under it, at `debug` level) go to the
//! OpenTelemetry layer alone, which has a filter of its own: every span of daytona-authz's, none
//! of its dependencies' (tonic, hyper, the exporter itself), whatever `RUST_LOG` says. Without
//! `--otlp-endpoint` there is no such layer, so no layer wants a span, tracing marks their
//! callsites disabled once, and a span costs a load and a branch.

use std::time::Duration;

use opentelemetry::trace::TracerProvider as _;
use opentelemetry_otlp::WithExportConfig as _;
use opentelemetry_otlp::WithTonicConfig as _;
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::trace::{Sampler, SdkTracerProvider};
use tracing_subscriber::filter::{EnvFilter, FilterExt as _, LevelFilter, Targets, filter_fn};
use tracing_subscriber::layer::SubscriberExt as _;
use tracing_subscriber::util::SubscriberInitExt as _;
use tracing_subscriber::{Layer as _, fmt};

use crate::config::{LogFormat, TracingConfig};
use crate::outbound::trust::TrustRoots;

/// The library's spans are exported from this level on (they are all `debug`, but for the
/// revocation mirror's once-a-second poll at `trace`, which would be a trace of its own every
/// second).
const SPAN_LEVEL: tracing::Level = tracing::Level::DEBUG;

/// Bound on the final export at shutdown (the drain is over by then).
const FLUSH_TIMEOUT: Duration = Duration::from_secs(5);

/// The running exporter: flush it with [`Telemetry::shutdown`] before the process exits.
pub struct Telemetry {
    provider: SdkTracerProvider,
    /// Runs the exporter's gRPC connection on a thread of its own, off the runtime that serves
    /// Checks (which may be a single thread), and still there while that one shuts down.
    runtime: tokio::runtime::Runtime,
}

impl Telemetry {
    /// Exports the spans still batched and stops the exporter.
    pub fn shutdown(self) {
        if let Err(error) = self.provider.shutdown_with_timeout(FLUSH_TIMEOUT) {
            tracing::warn!(%error, "could not export the last spans");
        }
        self.runtime.shutdown_timeout(Duration::from_secs(1));
    }
}

/// Why tracing could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum TelemetryError {
    #[error("cannot start the OTLP exporter's thread: {0}")]
    Runtime(std::io::Error),
    #[error("--otlp-endpoint: {0}")]
    Exporter(String),
}

/// Installs the subscriber: logs to stderr as `format` says, filtered by `RUST_LOG` (default
/// `info`), and with `tracing` set, spans exported over OTLP/gRPC (batched, off the Check path).
pub fn init(
    format: LogFormat,
    tracing: Option<&TracingConfig>,
    trust: &TrustRoots,
) -> Result<Option<Telemetry>, TelemetryError> {
    let telemetry = tracing.map(|t| exporter(t, trust)).transpose()?;
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let ansi = format == LogFormat::Pretty && std::io::IsTerminal::is_terminal(&std::io::stderr());
    let mut layers = log_layers(format, filter, ansi, std::io::stderr);
    let spans = telemetry.as_ref().map(|t| {
        let ours = Targets::new().with_target(env!("CARGO_CRATE_NAME"), SPAN_LEVEL);
        tracing_opentelemetry::layer()
            .with_tracer(t.provider.tracer(env!("CARGO_PKG_NAME")))
            // The code location stays; thread names and busy/idle times add nothing here.
            .with_threads(false)
            .with_target(false)
            .with_tracked_inactivity(false)
            .with_filter(ours.and(only(|meta| meta.is_span())))
            .boxed()
    });
    layers.extend(spans);
    tracing_subscriber::registry().with(layers).init();
    Ok(telemetry)
}

type BoxedLayer = Box<dyn tracing_subscriber::Layer<tracing_subscriber::Registry> + Send + Sync>;

/// The log layers, writing to `writer`: events `filter` lets through as `format` says, and audit
/// lines (`--audit-log`, target `daytona_authz::audit`) apart from the rest, always as one flat
/// JSON object per line and whatever `RUST_LOG` says, so they stay machine-readable next to human
/// logs and the flag alone decides whether they are written. Neither sees spans.
pub(super) fn log_layers<W>(
    format: LogFormat,
    filter: EnvFilter,
    ansi: bool,
    writer: W,
) -> Vec<BoxedLayer>
where
    W: for<'w> fmt::MakeWriter<'w> + Clone + Send + Sync + 'static,
{
    use crate::serve::audit;
    let logs = match format {
        LogFormat::Json => fmt::layer()
            .json()
            .flatten_event(true)
            .with_writer(writer.clone())
            .boxed(),
        LogFormat::Pretty => fmt::layer()
            .with_ansi(ansi)
            .with_writer(writer.clone())
            .boxed(),
    }
    .with_filter(filter_fn(|meta| meta.target() != audit::TARGET))
    .with_filter(filter.and(only(|meta| meta.is_event())));
    let audit = fmt::layer()
        .json()
        .flatten_event(true)
        .with_current_span(false)
        .with_span_list(false)
        .with_writer(writer)
        .with_filter(filter_fn(|meta| {
            meta.is_event() && meta.target() == audit::TARGET
        }));
    vec![logs.boxed(), audit.boxed()]
}

/// A filter by kind (events or spans) that leaves the level to the filter it is combined with:
/// with no hint of its own, the combination would have none, and tracing would then ask every
/// callsite instead of stopping at the level.
fn only(
    kind: fn(&tracing::Metadata<'_>) -> bool,
) -> tracing_subscriber::filter::FilterFn<fn(&tracing::Metadata<'_>) -> bool> {
    filter_fn(kind).with_max_level_hint(LevelFilter::TRACE)
}

fn exporter(config: &TracingConfig, trust: &TrustRoots) -> Result<Telemetry, TelemetryError> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .thread_name("otlp-export")
        .enable_all()
        .build()
        .map_err(TelemetryError::Runtime)?;
    // The gRPC channel spawns its connection onto the runtime it is built in.
    let _entered = runtime.enter();
    let endpoint = config.endpoint.as_str().trim_end_matches('/').to_owned();
    let mut builder = opentelemetry_otlp::SpanExporter::builder()
        .with_tonic()
        .with_endpoint(endpoint);
    if config.endpoint.scheme() == "https" {
        use opentelemetry_otlp::tonic_types::transport::{Certificate, ClientTlsConfig};
        let mut tls = ClientTlsConfig::new().with_webpki_roots();
        if trust.added() > 0 {
            tls = tls.ca_certificate(Certificate::from_pem(trust.added_pem()));
        }
        builder = builder.with_tls_config(tls);
    }
    let exporter = builder
        .build()
        .map_err(|e| TelemetryError::Exporter(e.to_string()))?;
    let resource = Resource::builder()
        .with_service_name(config.service_name.clone())
        .with_attribute(opentelemetry::KeyValue::new(
            "service.version",
            env!("CARGO_PKG_VERSION"),
        ))
        .build();
    let provider = SdkTracerProvider::builder()
        .with_batch_exporter(exporter)
        // Envoy's sampling decision (the traceparent's flag) holds; a span without a parent
        // (a JWKS refresh, a revocation written through the admin API) is always kept.
        .with_sampler(Sampler::ParentBased(Box::new(Sampler::AlwaysOn)))
        .with_resource(resource)
        .build();
    drop(_entered);
    Ok(Telemetry { provider, runtime })
}
