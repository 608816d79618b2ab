//! `tandemd`: the Tandem broker daemon. Reads the configuration (TOML file and
//! qpidd-style flags), checks what the runtime needs, starts one shard per core,
//! prints where it listens, and shuts down cleanly on SIGTERM or SIGINT.

use tandem::config;

use std::net::{IpAddr, SocketAddr, ToSocketAddrs};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use tandem_ha::broker::{ClusterInfo, HaBroker};
use tandem_ha::node::HaSettings;
use tandem_ha::role::HaHandler;
use tandem_ha::stream::StreamSettings;
use tandem_shards::amqp::codec::Value;
use tandem_shards::broker::admission::Admission;
use tandem_shards::broker::BrokerSettings;
use tandem_shards::queue::{LimitPolicy, QueueSettings};
use tandem_shards::runtime;

use config::Config;

fn main() -> ExitCode {
    let cfg = match Config::load(std::env::args_os()) {
        Ok(cfg) => cfg,
        Err(e) => e.exit(),
    };
    init_logging(&cfg);
    match run(&cfg) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e}");
            eprintln!("tandemd: {e}");
            ExitCode::FAILURE
        }
    }
}

fn init_logging(cfg: &Config) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(&cfg.log_enable));
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr())
        && cfg.log_format == tandem::log::LogFormat::Text;
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(ansi)
        .event_format(tandem::log::Lines {
            format: cfg.log_format,
            ansi,
        });
    if cfg.log_to_stderr {
        builder.with_writer(std::io::stderr).init();
    } else {
        builder.with_writer(std::io::sink).init();
    }
}

fn run(cfg: &Config) -> Result<(), String> {
    // Held until the broker exits: one broker per data-dir.
    let data_dir = tandem::data_dir::DataDir::open(&cfg.data_dir)?;
    tandem_shards::log_context::set_broker_id(&data_dir.broker_id);
    let users = std::sync::Arc::new(match &cfg.users_file {
        Some(path) => tandem_shards::users::UserDb::load(path)?,
        None if cfg.auth && !cfg.auth_given => {
            return Err(format!(
                "interface {} is not loopback, so auth is yes by default and needs users-file (a file of user:password lines); give one, or set auth = no explicitly",
                cfg.interface
            ))
        }
        None if cfg.auth => {
            return Err("auth = yes needs users-file (a file of user:password lines) so PLAIN logins can succeed".into())
        }
        None => Default::default(),
    });
    if !cfg.auth && !config::is_loopback(&cfg.interface) {
        tracing::warn!(
            "SECURITY: auth = no on interface {}: ANY client that can reach this port may read, publish and manage everything (set auth = yes with a users-file)",
            cfg.interface
        );
    }
    let bind = resolve(&cfg.interface, cfg.port)?;
    // TLS: the server side (and the handle that reloads its certificate on
    // SIGHUP), and for ssl: replication links the client side, verifying the
    // peer against ssl-ca-file and showing this broker's certificate.
    let tls_server = match &cfg.tls {
        None => None,
        Some(t) => Some(tandem_shards::tls::server_config(
            &tandem_shards::tls::ServerFiles {
                cert: t.cert.clone(),
                key: t.key.clone(),
                ca: t.ca.clone(),
                require_client_auth: t.require_client_auth,
            },
        )?),
    };
    let tls_client = match &cfg.tls {
        Some(t) if t.ca.is_some() => Some(tandem_shards::tls::client_config(
            &tandem_shards::tls::ClientFiles {
                ca: t.ca.clone(),
                cert: Some(t.cert.clone()),
                key: Some(t.key.clone()),
            },
        )?),
        _ => None,
    };
    let reload = tls_server.as_ref().map(|(_, r)| r.clone());
    let acl = match &cfg.acl_file {
        None => None,
        Some(path) => {
            let acl = std::sync::Arc::new(tandem_shards::acl::Acl::load(path)?);
            tracing::info!("ACL: {} loaded", path.display());
            Some(acl)
        }
    };
    let reloadable = std::sync::Arc::new(tandem_shards::reload::Reloadable {
        acl: acl.clone(),
        users: Some(users.clone()),
        cert: reload,
    });
    let settings = BrokerSettings {
        shards: cfg.worker_threads,
        auth: cfg.auth,
        users: users.clone(),
        max_connections: cfg.max_connections,
        max_frame_size: cfg.max_frame_size,
        idle_timeout: (!cfg.idle_timeout.is_zero()).then_some(cfg.idle_timeout),
        handshake_timeout: cfg.handshake_timeout,
        tls: match &tls_server {
            None => None,
            Some((server, _)) => cfg
                .tls
                .as_ref()
                .map(|t| tandem_shards::broker::TlsSettings {
                    port: t.port,
                    server: server.clone(),
                    // A backup's link to an ssl: address verifies the primary
                    // against ssl-ca-file and shows this broker's certificate.
                    client: tls_client.clone(),
                }),
        },
        require_encryption: cfg.require_encryption,
        access: match &acl {
            Some(acl) => acl.clone(),
            None => std::sync::Arc::new(tandem_shards::access::AllowAll),
        },
        realm: cfg.realm.clone(),
        reload: reloadable.clone(),
        max_handshaking: cfg.max_handshaking,
        link_credit: cfg.link_credit,
        default_queue: QueueSettings {
            max_size: cfg.default_max_queue_size,
            max_count: cfg.default_max_queue_count,
            policy: match cfg.default_limit_policy {
                config::LimitPolicy::Flow => LimitPolicy::Flow,
                config::LimitPolicy::Reject => LimitPolicy::Reject,
                config::LimitPolicy::Ring => LimitPolicy::Ring,
            },
            ..Default::default()
        },
        auto_create_queues: cfg.auto_create_queues,
        connection_placement: cfg.connection_placement,
        stall_threshold: cfg.stall_threshold,
        replica_consumers: cfg.ha.replica_consumers,
        container_id: format!("tandemd-{}", std::process::id()),
        ..Default::default()
    };
    let (mut settings, ha) = if cfg.ha.cluster {
        with_ha(cfg, settings, &data_dir.broker_id)?
    } else if cfg.ha.queue_replication {
        // Replicas of single queues, without a cluster.
        let stream = stream_settings(cfg, None);
        let factory = tandem_ha::stream::queue_replication_extension(stream);
        (settings, Some(factory))
    } else {
        (settings, None)
    };
    // The replication shard runs for a cluster and for queue replication
    // between stand-alone brokers (which will use it), and not otherwise.
    if cfg.ha.cluster || cfg.ha.queue_replication {
        replication_shard(cfg, &mut settings);
    }
    if cfg.ha.queue_replication && !cfg.ha.cluster {
        tracing::info!(
            "ha-queue-replication = yes: this broker serves replicas of its queues to other brokers and keeps replicas of theirs (tandem-ha replicate)"
        );
    }
    let extension = if cfg.store.enabled {
        let opened = tandem::store::open(&cfg.store, settings.shards)?;
        settings.initial_config = opened.initial_config;
        Some(tandem_store::ext::extension(
            opened.settings,
            opened.recovered,
            ha,
        ))
    } else {
        tracing::info!("store = no: nothing is written to disk");
        ha
    };
    // Block the stop signals before the shard threads exist, so they inherit the
    // mask and only this thread receives them (in sigwait below).
    let signals = stop_signals();
    // SAFETY: pthread_sigmask with a valid set.
    unsafe { libc::pthread_sigmask(libc::SIG_BLOCK, &signals, std::ptr::null_mut()) };

    let workers = settings.shards;
    let replication = settings.service_shard.is_some();
    // Bound before the shards start, so that a bad address stops the start.
    let http = match cfg.http_port {
        None => None,
        Some(port) => {
            let at = (cfg.http_interface.as_str(), port);
            let listener = std::net::TcpListener::bind(at).map_err(|e| {
                format!(
                    "http-port: cannot listen on {}:{port}: {e}",
                    cfg.http_interface
                )
            })?;
            let addr = listener
                .local_addr()
                .map_err(|e| format!("http-port: {e}"))?;
            Some((listener, addr))
        }
    };
    // The HTTP port takes the AMQP ports' checks: the same certificate, the
    // same users (when auth = yes) and the same ACL.
    let guard = tandem::http::Guard {
        tls: tls_server.as_ref().map(|(server, _)| server.clone()),
        users: cfg.auth.then(|| users.clone()),
        realm: cfg.realm.clone(),
        access: settings.access.clone(),
    };
    let running = runtime::start(settings, bind, extension).map_err(|e| e.to_string())?;
    if let Some((listener, addr)) = http {
        let who = tandem::metrics::BrokerIdentity {
            broker_id: data_dir.broker_id.clone(),
            version: env!("CARGO_PKG_VERSION"),
        };
        if cfg.auth && cfg.ha.username.is_none() {
            tracing::warn!(
                "http-port with auth = yes and no ha-username: the status page cannot log in to read the brokers (set ha-username and ha-password to a user of the users file)"
            );
        }
        let gathering = status_gathering(cfg, running.addr, &data_dir.broker_id, tls_client);
        let scheme = if guard.tls.is_some() { "https" } else { "http" };
        let login = if guard.users.is_some() {
            " (Basic credentials from the users file or a client certificate, but for /health and /ready)"
        } else {
            ""
        };
        tandem::http::start(listener, who, running.stats(), gathering, guard)?;
        tracing::info!(
            "HTTP on {scheme}://{addr}: /, /status.json, /metrics, /health, /ready{login}"
        );
        // Before the AMQP line scripts and tests wait for, so it is there by then.
        println!("tandemd http on {scheme}://{addr}");
    }
    tracing::info!(
        "listening on {} with {} shards{}, data-dir {}, auth {}",
        running.addr,
        workers,
        if replication {
            " and a replication shard (repl-0)"
        } else {
            ""
        },
        cfg.data_dir.display(),
        if cfg.auth { "yes" } else { "no" }
    );
    if let Some(tls) = running.tls_addr {
        tracing::info!(
            "TLS on {tls}{}",
            if cfg.require_encryption {
                " (require-encryption: plain clients are refused)"
            } else {
                ""
            }
        );
    }
    // The one stdout line scripts and tests wait for.
    println!(
        "tandemd listening on amqp://{} ({workers} shards)",
        running.addr
    );
    use std::io::Write;
    let _ = std::io::stdout().flush();

    let mut sig: libc::c_int = 0;
    loop {
        // SAFETY: sigwait on the blocked set.
        unsafe { libc::sigwait(&signals, &mut sig) };
        if sig != libc::SIGHUP {
            break;
        }
        // SIGHUP: read the ACL, the users file, the TLS certificate and key again.
        for part in reloadable.everything() {
            part.log("SIGHUP");
        }
    }
    tracing::info!("signal {sig}: shutting down");
    running.shutdown();
    tracing::info!("stopped");
    Ok(())
}

/// Whom the status page asks: every broker of the cluster, over the
/// cluster's own credentials and TLS, or this stand-alone broker itself.
fn status_gathering(
    cfg: &Config,
    listening: SocketAddr,
    broker_id: &str,
    tls: Option<std::sync::Arc<rustls::ClientConfig>>,
) -> tandem::status::Gathering {
    let brokers = match (&cfg.ha.brokers_url, cfg.ha.cluster) {
        (Some(url), true) => url
            .addrs
            .iter()
            .map(|a| tandem_shards::url::BrokerUrl {
                user: cfg.ha.username.clone(),
                password: cfg.ha.password.clone(),
                addrs: vec![a.clone()],
            })
            .collect(),
        _ => {
            let ip = if listening.ip().is_unspecified() {
                IpAddr::from([127, 0, 0, 1])
            } else {
                listening.ip()
            };
            let own = SocketAddr::new(ip, listening.port()).to_string();
            match own.parse::<tandem_shards::url::BrokerUrl>() {
                // With auth = yes the page logs in as ha-username, as a
                // cluster's pages do.
                Ok(url) => vec![tandem_shards::url::BrokerUrl {
                    user: cfg.ha.username.clone(),
                    password: cfg.ha.password.clone(),
                    ..url
                }],
                Err(_) => Vec::new(),
            }
        }
    };
    tandem::status::Gathering {
        brokers,
        broker_id: broker_id.to_owned(),
        tls,
    }
}

/// The epoch and cluster id this broker knew when it stopped (nothing on its
/// first start).
fn known_epoch(path: &Path) -> Result<tandem_ha::epoch_file::Known, String> {
    match std::fs::read_to_string(path) {
        Ok(text) => {
            tandem_ha::epoch_file::decode(&text).map_err(|e| format!("{}: {e}", path.display()))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Default::default()),
        Err(e) => Err(format!("{}: cannot read: {e}", path.display())),
    }
}

/// The replication shard `repl-0`: its own CPU on hosts with 4 or more,
/// unless the operator chose the worker count; otherwise it shares the last
/// CPU (or the one `ha-replication-cpu` names).
fn replication_shard(cfg: &Config, settings: &mut BrokerSettings) {
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    if !cfg.worker_threads_given && cpus >= 4 {
        settings.shards = cpus - 1;
    }
    settings.service_shard = Some("repl-0".into());
    settings.service_cpu = cfg.ha.replication_cpu;
}

/// A cluster member: starts admitting only admin connections, advertises the
/// cluster's public addresses, and runs the HA role on shard 0.
fn with_ha(
    cfg: &Config,
    mut settings: BrokerSettings,
    broker_id: &str,
) -> Result<(BrokerSettings, Option<runtime::ExtensionFactory>), String> {
    let brokers_url = cfg
        .ha
        .brokers_url
        .as_ref()
        .ok_or("ha-cluster = yes needs ha-brokers-url")?;
    // `ssl:host:port` for a TLS address: the replication link speaks TLS.
    let brokers: Vec<String> = brokers_url.addrs.iter().map(|a| a.to_string()).collect();
    let own_plain = format!("{}:{}", cfg.interface, cfg.port);
    let own_tls = cfg
        .tls
        .as_ref()
        .map(|t| format!("ssl:{}:{}", cfg.interface, t.port));
    let own_address = match own_tls {
        Some(tls) if brokers.contains(&tls) => tls,
        _ => own_plain,
    };
    let public = cfg.ha.public_url.as_ref().unwrap_or(brokers_url);
    let servers: Vec<Value> = public
        .addrs
        .iter()
        .map(|a| {
            Value::Map(vec![
                (Value::symbol("network-host"), Value::string(&a.host)),
                // An AMQP int, which Qpid JMS reads as an Integer.
                (Value::symbol("port"), Value::Int(i32::from(a.port))),
            ])
        })
        .collect();
    settings
        .open_properties
        .push(("failover-server-list".into(), Value::List(servers)));
    if cfg.auth {
        // Only the cluster's own user may act as the cluster (qpid.ha-admin,
        // qpid.ha-backup, $ha.replication, promote).
        if cfg.ha.username.is_none() {
            tracing::warn!(
                "auth = yes without ha-username: no user may act as the cluster, so backups cannot replicate and promote is refused"
            );
        }
        settings.cluster_users = Some(cfg.ha.username.iter().cloned().collect());
    }
    settings.initial_admission = Admission::AdminOnly {
        reason: "backup broker (joining), not primary: try another address".into(),
    };
    let epoch_file = cfg.data_dir.join("ha-epoch");
    let known = known_epoch(&epoch_file)?;
    if let Some(id) = &known.cluster {
        tracing::info!(
            "HA: this data-dir belongs to cluster {id} (epoch {})",
            known.epoch
        );
    }
    let ha_settings = HaSettings {
        // Persisted in data-dir: a restarted backup is the member it was.
        broker_id: broker_id.to_owned(),
        brokers,
        backup_timeout: cfg.ha.backup_timeout,
        min_backups: cfg.ha.min_backups,
        heartbeat: cfg.ha.link_heartbeat_interval,
        maintenance: cfg.ha.link_maintenance_interval,
        own_address: Some(own_address),
        initial_epoch: known.epoch,
        initial_cluster_id: known.cluster,
    };
    let info = ClusterInfo {
        brokers_url: brokers_url.redacted(),
        public_url: public.redacted(),
        replicate: cfg.ha.replicate.to_string(),
        sync_config: cfg.ha.sync_config,
        self_address: format!("{}:{}", cfg.interface, cfg.port),
    };
    let stream = stream_settings(cfg, Some(epoch_file));
    let started = std::time::Instant::now();
    let factory = tandem_ha::stream::extension(stream, move || {
        Box::new(HaBroker::new(ha_settings.clone(), info.clone(), started)) as Box<dyn HaHandler>
    });
    Ok((settings, Some(factory)))
}

/// How the replication stream runs, from the `ha-*` options (`epoch_file`
/// for a cluster member).
fn stream_settings(cfg: &Config, epoch_file: Option<PathBuf>) -> StreamSettings {
    StreamSettings {
        replicate: cfg.ha.replicate.to_string(),
        username: cfg.ha.username.clone(),
        mechanism: cfg.ha.mechanism.clone(),
        password: cfg.ha.password.clone(),
        heartbeat: cfg.ha.link_heartbeat_interval,
        min_backups_timeout: cfg.ha.min_backups_timeout,
        cluster: epoch_file.is_some(),
        queue_replication: cfg.ha.cluster || cfg.ha.queue_replication,
        epoch_file,
    }
}

fn stop_signals() -> libc::sigset_t {
    // SAFETY: sigemptyset/sigaddset initialise the set we own.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGTERM);
        libc::sigaddset(&mut set, libc::SIGINT);
        // Not a stop: reloads the TLS certificate.
        libc::sigaddset(&mut set, libc::SIGHUP);
        set
    }
}

fn resolve(interface: &str, port: u16) -> Result<SocketAddr, String> {
    if let Ok(ip) = interface.parse::<IpAddr>() {
        return Ok(SocketAddr::new(ip, port));
    }
    (interface, port)
        .to_socket_addrs()
        .map_err(|e| format!("interface '{interface}': cannot resolve: {e}"))?
        .next()
        .ok_or_else(|| format!("interface '{interface}': no address"))
}
