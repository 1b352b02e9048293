//! `palisade`: operate a Palisade mesh through the control plane's administration API.
//!
//! Exit codes: 0 success, 1 the request failed (refused, invalid, unreachable), 2 usage.

use std::process::ExitCode;

use clap::{Parser, Subcommand, ValueEnum};

mod client;
mod decisions;
mod mesh;
mod verify;

use client::{ApiClient, ApiError};

/// Operate a Palisade service mesh.
#[derive(Debug, Parser)]
#[command(name = "palisade", version, about, long_about = None)]
struct Cli {
    /// The control plane's administration API.
    #[arg(
        long,
        env = "PALISADE_SERVER",
        default_value = "http://127.0.0.1:15080",
        global = true
    )]
    server: String,

    /// File holding an admin bearer token (the control plane writes one to <data-dir>/admin-token).
    #[arg(long, env = "PALISADE_TOKEN_FILE", global = true)]
    token_file: Option<std::path::PathBuf>,

    /// The admin bearer token itself (overrides --token-file).
    #[arg(long, env = "PALISADE_TOKEN", global = true, hide_env_values = true)]
    token: Option<String>,

    /// With an https:// server: the mesh's trust bundle (PEM) to verify the control plane.
    #[arg(long, env = "PALISADE_CA_BUNDLE", global = true)]
    ca_bundle: Option<std::path::PathBuf>,

    /// With an https:// server: a client certificate chain (PEM) naming an operator's SPIFFE
    /// ID, instead of a token.
    #[arg(long, env = "PALISADE_CERT", global = true, requires = "key")]
    cert: Option<std::path::PathBuf>,

    /// The private key of --cert (PEM, PKCS#8).
    #[arg(long, env = "PALISADE_KEY", global = true, requires = "cert")]
    key: Option<std::path::PathBuf>,

    /// The mesh's trust domain (the control plane presents
    /// spiffe://<trust-domain>/ns/palisade-system/sa/control-plane).
    #[arg(
        long,
        env = "PALISADE_TRUST_DOMAIN",
        default_value = "palisade.local",
        global = true
    )]
    trust_domain: String,

    /// Output format.
    #[arg(short, long, value_enum, default_value = "table", global = true)]
    output: Output,

    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum Output {
    Table,
    Json,
    /// The stored documents themselves (`get` only; elsewhere as json).
    Yaml,
}

#[derive(Debug, Subcommand)]
enum AuditCommand {
    /// Verify a decision log: the control plane's central store (auditor role), or with
    /// --dir a sidecar's spool offline (`--decision-dir`, with the trust bundle given as
    /// --ca-bundle alone): records present, in order, unchanged, and checkpoints signed by
    /// the workload that wrote them. Exits 0 only when every instance is clean.
    Verify {
        /// A sidecar's decision directory (or a copy of it), checked offline.
        #[arg(long)]
        dir: Option<std::path::PathBuf>,
    },
}

#[derive(Debug, Subcommand)]
enum DecisionsCommand {
    /// Which policy decided a request, and why: its stored decisions, each with
    /// `simulate`'s explanation (the answer to "which policy denied me?"). The request id
    /// is the response's x-request-id header.
    Explain { request_id: String },
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Bootstrap tokens for sidecars.
    #[command(subcommand)]
    Token(TokenCommand),
    /// Tokens for the administration API: create (shown once), list, revoke.
    #[command(subcommand)]
    AdminToken(AdminTokenCommand),
    /// The mesh's certificate authority.
    #[command(subcommand)]
    Ca(CaCommand),
    /// Create or replace the documents of a file (YAML or JSON, several `---`-separated),
    /// all or nothing.
    Apply {
        /// The file, or - for standard input.
        #[arg(short, long)]
        file: String,
        /// Show what would change (a diff per document), change nothing.
        #[arg(long)]
        dry_run: bool,
    },
    /// List documents of a type: policies, requestauthentications or services.
    Get {
        kind: String,
        /// Only this namespace.
        #[arg(short, long)]
        namespace: Option<String>,
    },
    /// Delete one document.
    Delete {
        /// policy, requestauthentication or service.
        kind: String,
        name: String,
        #[arg(short, long)]
        namespace: String,
    },
    /// Ask the control plane what a sidecar would decide for a request, and why.
    Simulate {
        /// The caller's SPIFFE ID.
        #[arg(long)]
        from: String,
        /// The destination service: NAME.NAMESPACE, or NAME in the caller's namespace. For
        /// AMQP, the publishing workload's own service (default: --from's service account).
        #[arg(long)]
        to: Option<String>,
        /// Simulate an AMQP publish instead of an HTTP request: EXCHANGE:ROUTING_KEY, with
        /// more keys comma-separated as CC would add them (e.g. shop.events:order.created).
        #[arg(long)]
        amqp_publish: Option<String>,
        #[arg(long, default_value = "GET")]
        method: String,
        #[arg(long, default_value = "/")]
        path: String,
        /// A request header, NAME=VALUE (repeatable).
        #[arg(short = 'H', long = "header")]
        headers: Vec<String>,
        /// The destination port.
        #[arg(long, default_value_t = 8080)]
        port: u16,
        /// Evaluate as if these documents (a file, or -) were applied.
        #[arg(long, conflicts_with = "at_version")]
        proposed: Option<String>,
        /// Evaluate under the policies as they stood at this mesh version (a decision's
        /// policy_version), replayed from the audit trail.
        #[arg(long)]
        at_version: Option<i64>,
    },
    /// The sidecars following the configuration, with the version each has applied.
    Workloads,
    /// The admin audit trail (needs the auditor or admin role); `audit verify` checks a
    /// decision log.
    #[command(args_conflicts_with_subcommands = true)]
    Audit {
        #[command(subcommand)]
        command: Option<AuditCommand>,
        /// Only entries this recent (e.g. 1h).
        #[arg(long, value_parser = humantime::parse_duration)]
        since: Option<std::time::Duration>,
        /// Only changes by this principal.
        #[arg(long)]
        principal: Option<String>,
    },
    /// The central decision log (needs the auditor or admin role): every authorization
    /// decision the sidecars shipped, and the control plane's own (certificates issued,
    /// renewed, refused), newest first.
    #[command(args_conflicts_with_subcommands = true)]
    Decisions {
        #[command(subcommand)]
        command: Option<DecisionsCommand>,
        #[command(flatten)]
        filters: decisions::Filters,
        /// Keep printing new decisions as they arrive (oldest first), until interrupted.
        #[arg(short, long)]
        follow: bool,
    },
    /// Lint the mesh: wildcard ALLOW rules, policies selecting unknown services, services no
    /// ALLOW policy selects, sidecars behind on configuration or near certificate expiry.
    /// Exits 1 when a finding is an error.
    Check,
    /// Add the sidecar to the pods of Kubernetes manifests, offline: the same code as the
    /// control plane's admission webhook. Prints the manifests (YAML) with Pods and the pod
    /// templates of Deployments, StatefulSets, DaemonSets, ReplicaSets, Jobs and CronJobs
    /// injected; other kinds, opted-out and already-injected pods unchanged. Needs no
    /// control plane.
    Inject {
        /// The manifests (YAML or JSON, several `---`-separated), or - for standard input.
        #[arg(short, long)]
        file: String,
        /// The sidecar image.
        #[arg(long, default_value_t = palisade_inject::Settings::default().image)]
        image: String,
        /// The control plane's sidecar-facing address, as pods reach it.
        #[arg(long, default_value_t = palisade_inject::Settings::default().control_plane)]
        control_plane: String,
        /// Add the sidecar as a regular first container instead of a native sidecar (for
        /// clusters before Kubernetes 1.29).
        #[arg(long)]
        no_native_sidecar: bool,
    },
}

#[derive(Debug, Subcommand)]
enum TokenCommand {
    /// Create a single-use join token for a workload identity; prints the token.
    Create {
        /// Namespace of the workload.
        #[arg(short, long)]
        namespace: String,
        /// Service account of the workload.
        #[arg(short = 's', long)]
        service_account: String,
        /// How long the token may be used (e.g. 10m; at most 24h).
        #[arg(long, default_value = "10m", value_parser = humantime::parse_duration)]
        ttl: std::time::Duration,
    },
}

/// What `palisade admin-token` was asked to do, for [`mesh::admin_token`].
fn command_args(command: AdminTokenCommand) -> mesh::AdminTokenAction {
    match command {
        AdminTokenCommand::Create { role, name, ttl } => {
            mesh::AdminTokenAction::Create { role, name, ttl }
        }
        AdminTokenCommand::List => mesh::AdminTokenAction::List,
        AdminTokenCommand::Revoke { id_or_name } => mesh::AdminTokenAction::Revoke(id_or_name),
    }
}

#[derive(Debug, Subcommand)]
enum AdminTokenCommand {
    /// Create a token for one role; prints the token (it is not stored and cannot be shown
    /// again). Needs the admin role.
    Create {
        /// viewer, editor, auditor or admin.
        #[arg(long)]
        role: String,
        /// A name to list and revoke it by, and the principal the audit trail records
        /// (lower-case letters, digits, '-'; unique among usable tokens).
        #[arg(long)]
        name: String,
        /// How long the token may be used (e.g. 8h; at most 90d).
        #[arg(long, default_value = "1h", value_parser = humantime::parse_duration)]
        ttl: std::time::Duration,
    },
    /// List the tokens (never the tokens themselves): id, name, role, expiry, revocation.
    List,
    /// Revoke a token by id or name; refused on the very next call, on every replica.
    /// Revoke `initial-admin` once named admin tokens exist.
    Revoke { id_or_name: String },
}

#[derive(Debug, Subcommand)]
enum CaCommand {
    /// Show the trust domain, roots, rotation phase, and the sidecars (seen in the last
    /// minute) that still trust a dropped root or do not trust every root yet.
    Status,
    /// Print the trust bundle (PEM).
    Bundle,
    /// Rotate the root: prepare, activate, wait one workload TTL, finish. Each step's bundle
    /// is pushed to every sidecar; the command waits up to 10 s for the sidecars to
    /// acknowledge it and reports those that have not.
    Rotate {
        #[arg(value_enum)]
        step: RotationStep,
    },
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum RotationStep {
    /// Create the next root and add it to the trust bundle.
    Prepare,
    /// Sign new certificates with the next root.
    Activate,
    /// Drop the previous root from the trust bundle.
    Finish,
}

/// Settings from the config file (`--config`, `PALISADE_CONFIG`, or
/// `~/.config/palisade/config.yaml`), used where neither a flag nor the environment gave
/// one:
///
/// ```yaml
/// server: http://127.0.0.1:15080
/// tokenFile: /var/lib/palisade/admin-token
/// ```
#[derive(Debug, Default, serde::Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct FileSettings {
    server: Option<String>,
    token_file: Option<std::path::PathBuf>,
}

fn config_path() -> Option<std::path::PathBuf> {
    if let Ok(p) = std::env::var("PALISADE_CONFIG") {
        return Some(p.into());
    }
    std::env::var_os("HOME").map(|h| std::path::Path::new(&h).join(".config/palisade/config.yaml"))
}

/// Parses the command line, then fills what it left at defaults from the config file.
fn parse_cli() -> Result<Cli, ApiError> {
    use clap::parser::ValueSource;
    use clap::{CommandFactory, FromArgMatches};
    let matches = Cli::command().get_matches();
    let mut cli = Cli::from_arg_matches(&matches).map_err(|e| ApiError::Usage(e.to_string()))?;
    let Some(path) = config_path().filter(|p| p.is_file()) else {
        return Ok(cli);
    };
    let text = std::fs::read_to_string(&path)
        .map_err(|e| ApiError::Usage(format!("reading {}: {e}", path.display())))?;
    let file: FileSettings = serde_saphyr::from_str(&text)
        .map_err(|e| ApiError::Usage(format!("{}: {e}", path.display())))?;
    if matches.value_source("server") == Some(ValueSource::DefaultValue)
        && let Some(server) = file.server
    {
        cli.server = server;
    }
    if cli.token.is_none() && cli.token_file.is_none() {
        cli.token_file = file.token_file;
    }
    Ok(cli)
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    let cli = match parse_cli() {
        Ok(cli) => cli,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(2);
        }
    };
    match run(cli).await {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("error: {e}");
            match e {
                ApiError::Usage(_) => ExitCode::from(2),
                _ => ExitCode::FAILURE,
            }
        }
    }
}

/// Ok(false): the command ran and found a problem (`check`).
async fn run(cli: Cli) -> Result<bool, ApiError> {
    let token = match (&cli.token, &cli.token_file) {
        (Some(t), _) => Some(t.trim().to_owned()),
        (None, Some(path)) => Some(
            std::fs::read_to_string(path)
                .map_err(|e| {
                    ApiError::Usage(format!("reading --token-file {}: {e}", path.display()))
                })?
                .trim()
                .to_owned(),
        ),
        (None, None) => None,
    };
    if let Command::Audit {
        command: Some(AuditCommand::Verify { dir: Some(dir) }),
        ..
    } = &cli.command
    {
        return verify::dir(dir, cli.ca_bundle.as_deref(), &cli.trust_domain, cli.output);
    }
    if let Command::Inject {
        file,
        image,
        control_plane,
        no_native_sidecar,
    } = &cli.command
    {
        let settings = palisade_inject::Settings {
            image: image.clone(),
            control_plane: control_plane.clone(),
            trust_domain: cli.trust_domain.clone(),
            native_sidecar: !no_native_sidecar,
            ..palisade_inject::Settings::default()
        };
        mesh::inject(file, &settings)?;
        return Ok(true);
    }
    let api = ApiClient::new(
        &cli.server,
        token,
        &client::TlsFiles {
            ca_bundle: cli.ca_bundle.as_deref(),
            cert: cli.cert.as_deref(),
            key: cli.key.as_deref(),
            trust_domain: &cli.trust_domain,
        },
    )?;
    match cli.command {
        Command::Token(TokenCommand::Create {
            namespace,
            service_account,
            ttl,
        }) => {
            let body = serde_json::json!({
                "namespace": namespace,
                "serviceAccount": service_account,
                "ttlSeconds": ttl.as_secs(),
            });
            let response = api.post_json("/v1/join-tokens", &body).await?;
            match cli.output {
                Output::Json | Output::Yaml => println!("{response:#}"),
                Output::Table => println!("{}", response["token"].as_str().unwrap_or_default()),
            }
        }
        Command::AdminToken(command) => {
            mesh::admin_token(&api, command_args(command), cli.output).await?
        }
        Command::Ca(CaCommand::Status) => {
            let status = api.get_json("/v1/ca").await?;
            print_ca_status(&status, cli.output);
        }
        Command::Ca(CaCommand::Bundle) => print!("{}", api.get_text("/v1/trust-bundle").await?),
        Command::Ca(CaCommand::Rotate { step }) => {
            let step = match step {
                RotationStep::Prepare => "prepare",
                RotationStep::Activate => "activate",
                RotationStep::Finish => "finish",
            };
            let mut status = api
                .post_json(&format!("/v1/ca/rotation/{step}"), &serde_json::json!({}))
                .await?;
            // Every sidecar gets the new bundle within moments: wait for their
            // acknowledgements, so the report says who has it and who has not.
            let started = std::time::Instant::now();
            while !mesh::sidecars_behind(&status).is_empty()
                && started.elapsed() < std::time::Duration::from_secs(10)
            {
                tokio::time::sleep(std::time::Duration::from_millis(200)).await;
                status = api.get_json("/v1/ca").await?;
            }
            print_ca_status(&status, cli.output);
        }
        Command::Apply { file, dry_run } => mesh::apply(&api, &file, dry_run, cli.output).await?,
        Command::Get { kind, namespace } => {
            mesh::get(&api, &kind, namespace.as_deref(), cli.output).await?
        }
        Command::Delete {
            kind,
            name,
            namespace,
        } => mesh::delete(&api, &kind, &name, &namespace, cli.output).await?,
        Command::Simulate {
            from,
            to,
            amqp_publish,
            method,
            path,
            headers,
            port,
            proposed,
            at_version,
        } => {
            let target = match &amqp_publish {
                Some(spec) => mesh::Target::AmqpPublish(spec),
                None => mesh::Target::Http {
                    method: &method,
                    path: &path,
                    headers: &headers,
                    port,
                },
            };
            mesh::simulate(
                &api,
                &from,
                to.as_deref(),
                target,
                match (&proposed, at_version) {
                    (Some(file), _) => mesh::Policies::Proposed(file),
                    (None, Some(v)) => mesh::Policies::AtVersion(v),
                    (None, None) => mesh::Policies::Current,
                },
                cli.output,
            )
            .await?
        }
        Command::Workloads => mesh::workloads(&api, cli.output).await?,
        Command::Audit {
            command: Some(AuditCommand::Verify { dir: Some(_) }),
            ..
        } => unreachable!("handled before connecting"),
        Command::Audit {
            command: Some(AuditCommand::Verify { dir: None }),
            ..
        } => return verify::central(&api, cli.output).await,
        Command::Audit {
            command: None,
            since,
            principal,
        } => mesh::audit(&api, since, principal.as_deref(), cli.output).await?,
        Command::Decisions {
            command: Some(DecisionsCommand::Explain { request_id }),
            ..
        } => decisions::explain(&api, &request_id, cli.output).await?,
        Command::Decisions {
            command: None,
            filters,
            follow,
        } => decisions::list(&api, &filters, follow, cli.output).await?,
        Command::Check => return mesh::check(&api, cli.output).await,
        Command::Inject { .. } => unreachable!("handled before connecting"),
    }
    Ok(true)
}

fn print_ca_status(status: &serde_json::Value, output: Output) {
    if let Output::Json | Output::Yaml = output {
        println!("{status:#}");
        return;
    }
    let s = |v: &serde_json::Value| v.as_str().unwrap_or("-").to_owned();
    println!("trust domain:   {}", s(&status["trustDomain"]));
    println!("mode:           {}", s(&status["mode"]));
    println!("rotation phase: {}", s(&status["rotationPhase"]));
    println!("workload TTL:   {}s", status["workloadTtlSeconds"]);
    println!("signing key:    {}", s(&status["keyProtection"]));
    println!();
    println!(
        "{:<8} {:<17} {:<34} {:<22} SUBJECT",
        "SIGNING", "ID", "SERIAL", "NOT AFTER (UNIX)"
    );
    for root in status["roots"].as_array().into_iter().flatten() {
        println!(
            "{:<8} {:<17} {:<34} {:<22} {}",
            if root["signing"].as_bool() == Some(true) {
                "yes"
            } else {
                "no"
            },
            s(&root["id"]),
            s(&root["serial"]),
            root["notAfter"],
            s(&root["subject"]),
        );
    }
    println!();
    let behind = mesh::sidecars_behind(status);
    println!(
        "sidecars seen in the last minute: {}; behind the bundle: {}",
        status["sidecars"]["seen"],
        behind.len()
    );
    for (what, sidecar) in behind {
        println!("  {sidecar}: {what}");
    }
}
