//! Unit tests of the roles' settings and helpers (`super`).

use super::*;
use crate::settings::DEFAULT_PREWARM;
use clap::Parser;
use std::net::{IpAddr, Ipv4Addr};
use wrenn_agent::sandbox::WarmSpec;

#[derive(Parser)]
struct Cli {
    #[command(flatten)]
    prewarm: PrewarmArgs,
}

fn specs(args: &[&str]) -> Vec<String> {
    let cli =
        Cli::try_parse_from(std::iter::once("wrenn").chain(args.iter().copied())).expect("parses");
    cli.prewarm.specs().iter().map(WarmSpec::arg).collect()
}

#[derive(Parser)]
struct ServerCli {
    #[command(flatten)]
    settings: ServerSettings,
}

fn server_config(args: &[&str]) -> ServerConfig {
    let cli = ServerCli::try_parse_from(std::iter::once("wrenn").chain(args.iter().copied()))
        .expect("parses");
    let mut cfg = ServerConfig::new("/tmp/wrenn-settings-test", vec![0u8; 32]);
    cli.settings.apply(&mut cfg);
    cfg
}

#[test]
fn server_settings_not_given_keep_the_control_planes_defaults() {
    let got = server_config(&[]);
    let want = ServerConfig::new("/tmp/wrenn-settings-test", vec![0u8; 32]);
    assert_eq!(got.signup, want.signup);
    assert_eq!(got.quotas, want.quotas);
    assert_eq!(got.sandbox_bounds, want.sandbox_bounds);
    assert_eq!(got.trusted_proxies, want.trusted_proxies);
    assert_eq!(got.max_connections, want.max_connections);
    assert_eq!(got.request_timeout, want.request_timeout);
    assert_eq!(got.reconcile_interval, want.reconcile_interval);
}

#[test]
fn server_settings_given_replace_the_defaults() {
    let cfg = server_config(&[
        "--signup",
        "closed",
        "--quota-running",
        "3",
        "--quota-vcpus",
        "6",
        "--quota-memory-mb",
        "4096",
        "--quota-templates",
        "7",
        "--quota-concurrent-creates",
        "2",
        "--max-vcpus",
        "4",
        "--max-memory-mb",
        "2048",
        "--max-timeout-sec",
        "600",
        "--trusted-proxy",
        "10.0.0.1",
        "--trusted-proxy",
        "::1",
        "--max-connections",
        "64",
        "--request-timeout-ms",
        "1500",
        "--reconcile-interval-ms",
        "2500",
        "--exec-max-output-bytes",
        "65536",
        "--execs-per-sandbox",
        "3",
        "--execs-per-team",
        "5",
        "--stream-stall-ms",
        "700",
    ]);
    assert_eq!(cfg.signup, SignupMode::Closed);
    let q = cfg.quotas;
    assert_eq!(
        (
            q.running_sandboxes,
            q.vcpus,
            q.memory_mb,
            q.templates,
            q.concurrent_creates
        ),
        (3, 6, 4096, 7, 2)
    );
    let b = cfg.sandbox_bounds;
    assert_eq!(
        (b.max_vcpus, b.max_memory_mb, b.max_timeout_sec),
        (4, 2048, 600)
    );
    let proxies: Vec<IpAddr> = vec!["10.0.0.1".parse().unwrap(), "::1".parse().unwrap()];
    assert_eq!(cfg.trusted_proxies, proxies);
    assert_eq!(cfg.max_connections, 64);
    assert_eq!(cfg.request_timeout, Duration::from_millis(1500));
    assert_eq!(cfg.reconcile_interval, Duration::from_millis(2500));
    let e = cfg.exec_limits;
    assert_eq!(
        (
            e.max_output_bytes,
            e.per_sandbox,
            e.per_team,
            e.stream_stall
        ),
        (65536, 3, 5, Duration::from_millis(700))
    );
    cfg.validate().expect("valid");
    // One quota alone leaves the others as they were.
    let cfg = server_config(&["--quota-running", "1"]);
    let want = wrenn_server::config::Quotas {
        running_sandboxes: 1,
        ..Default::default()
    };
    assert_eq!(cfg.quotas, want);
}

#[test]
fn server_settings_refuse_bad_values() {
    for bad in [
        &["--signup", "invite"][..],
        &["--quota-running", "-1"],
        &["--max-connections", "0"],
        &["--request-timeout-ms", "0"],
        &["--reconcile-interval-ms", "0"],
        &["--trusted-proxy", "proxy.example"],
        &["--exec-max-output-bytes", "0"],
        &["--exec-max-output-bytes", "4194305"],
        &["--execs-per-sandbox", "0"],
        &["--execs-per-team", "0"],
        &["--stream-stall-ms", "0"],
        &["--stream-stall-ms", "60001"],
    ] {
        assert!(
            ServerCli::try_parse_from(std::iter::once("wrenn").chain(bad.iter().copied())).is_err(),
            "{bad:?} accepted"
        );
    }
    // Bounds over the fixed ceilings parse, and the control plane refuses them at start.
    assert!(server_config(&["--max-vcpus", "64"]).validate().is_err());
}

#[test]
fn server_settings_round_trip_through_their_environment_variables() {
    let args = [
        "--signup",
        "closed",
        "--quota-templates",
        "9",
        "--trusted-proxy",
        "10.0.0.1,10.0.0.2",
        "--max-connections",
        "10",
    ];
    let cli = ServerCli::try_parse_from(std::iter::once("wrenn").chain(args)).unwrap();
    let vars = cli.settings.env_vars();
    let find = |k: &str| vars.iter().find(|(n, _)| *n == k).map(|(_, v)| v.as_str());
    assert_eq!(find("WRENN_SIGNUP"), Some("closed"));
    assert_eq!(find("WRENN_QUOTA_TEMPLATES"), Some("9"));
    assert_eq!(find("WRENN_TRUSTED_PROXIES"), Some("10.0.0.1,10.0.0.2"));
    assert_eq!(find("WRENN_MAX_CONNECTIONS"), Some("10"));
    assert_eq!(vars.len(), 4, "{vars:?}");
    assert!(ServerSettings::default().env_vars().is_empty());
}

#[test]
fn proxy_settings_reach_the_control_plane_and_its_settings_file() {
    let defaults = server_config(&[]);
    assert_eq!(defaults.proxy, wrenn_server::config::ProxyConfig::default());
    let args = [
        "--proxy-domain",
        "Sandbox.Example.com:8080",
        "--proxy-auth",
        "url",
        "--proxy-per-capsule",
        "5",
        "--proxy-per-team",
        "9",
    ];
    let cfg = server_config(&args);
    let p = &cfg.proxy;
    // The SDK's WRENN_PROXY_DOMAIN (with the API's port) names the same domain.
    assert_eq!(p.domain.as_deref(), Some("sandbox.example.com"));
    assert_eq!(p.auth, wrenn_server::config::ProxyAuth::Url);
    assert_eq!((p.per_capsule, p.per_team), (5, 9));
    cfg.validate().expect("valid");
    let cli = ServerCli::try_parse_from(std::iter::once("wrenn").chain(args)).unwrap();
    let vars = cli.settings.env_vars();
    let find = |k: &str| vars.iter().find(|(n, _)| *n == k).map(|(_, v)| v.as_str());
    assert_eq!(find("WRENN_PROXY_DOMAIN"), Some("sandbox.example.com"));
    assert_eq!(find("WRENN_PROXY_AUTH"), Some("url"));
    assert_eq!(find("WRENN_PROXY_PER_CAPSULE"), Some("5"));
    assert_eq!(find("WRENN_PROXY_PER_TEAM"), Some("9"));
    for bad in [
        &["--proxy-domain", "http://x.example.com"][..],
        &["--proxy-domain", "*.example.com"],
        &["--proxy-domain", ""],
        &["--proxy-auth", "none"],
        &["--proxy-per-capsule", "0"],
    ] {
        assert!(
            ServerCli::try_parse_from(std::iter::once("wrenn").chain(bad.iter().copied())).is_err(),
            "{bad:?} accepted"
        );
    }
}

#[derive(Parser)]
struct AgentCli {
    #[command(flatten)]
    agent: AgentArgs,
}

fn parse_agent(args: &[&str]) -> Result<AgentArgs, clap::Error> {
    AgentCli::try_parse_from(
        ["agent", "--token", "0123456789abcdef0123"]
            .into_iter()
            .chain(args.iter().copied()),
    )
    .map(|c| c.agent)
}

fn agent_net(args: &[&str]) -> NetConfig {
    parse_agent(args)
        .expect("parses")
        .config()
        .expect("config")
        .net
}

#[test]
fn agent_network_settings() {
    let defaults = NetConfig::default();
    let net = agent_net(&[]);
    assert_eq!(net.dns_resolvers, defaults.dns_resolvers);
    assert_eq!(net.rules_check_interval, defaults.rules_check_interval);

    let net = agent_net(&[
        "--dns-resolver",
        "9.9.9.9",
        "--dns-resolver",
        "1.1.1.1",
        "--rules-check-interval-ms",
        "250",
    ]);
    let want: Vec<Ipv4Addr> = vec![Ipv4Addr::new(9, 9, 9, 9), Ipv4Addr::new(1, 1, 1, 1)];
    assert_eq!(net.dns_resolvers, Some(want));
    assert_eq!(net.rules_check_interval, Duration::from_millis(250));
    for bad in [
        &["--dns-resolver", "::1"][..],
        &["--rules-check-interval-ms", "0"],
    ] {
        assert!(parse_agent(bad).is_err(), "{bad:?} accepted");
    }
}

#[test]
fn agent_pool_settings() {
    let cfg = parse_agent(&[]).unwrap().config().unwrap();
    assert!(!cfg.pool.enabled(), "pools are off unless asked for");
    let cfg = parse_agent(&["--pool-size", "3", "--pool-memory-mb", "4096"])
        .unwrap()
        .config()
        .unwrap();
    assert_eq!(cfg.pool.max_per_shape, 3);
    assert_eq!(cfg.pool.memory_budget_mb, 4096);
    assert!(cfg.pool.enabled());
    assert!(parse_agent(&["--pool-size", "17"]).is_err());
}

#[test]
fn agent_admission_settings() {
    let cfg = parse_agent(&[]).unwrap().config().unwrap();
    assert_eq!(
        cfg.admission,
        wrenn_agent::sandbox::AdmissionConfig::default()
    );
    let cfg = parse_agent(&[
        "--memory-overcommit",
        "1.5",
        "--memory-reserve-mb",
        "2048",
        "--disk-reserve-mb",
        "4096",
    ])
    .unwrap()
    .config()
    .unwrap();
    assert_eq!(cfg.admission.memory_overcommit, 1.5);
    assert_eq!(cfg.admission.memory_reserve_mb, 2048);
    assert_eq!(cfg.admission.disk_reserve_mb, 4096);
    assert!(parse_agent(&["--memory-reserve-mb", "-1"]).is_err());
}

#[test]
fn the_default_prewarm_is_the_default_create() {
    use wrenn_server::config::limits;
    let want = format!(
        "{}:{}:{}",
        limits::DEFAULT_TEMPLATE,
        limits::DEFAULT_VCPUS,
        limits::DEFAULT_MEMORY_MB
    );
    assert_eq!(DEFAULT_PREWARM, want);
    assert_eq!(specs(&[]), [want]);
}

#[test]
fn prewarm_is_a_list_and_can_be_turned_off() {
    assert_eq!(
        specs(&["--prewarm", "minimal:2:1024", "--prewarm", "minimal:1:256"]),
        ["minimal:2:1024", "minimal:1:256"]
    );
    assert_eq!(
        specs(&["--prewarm", "minimal:1:512,minimal:4:2048"]).len(),
        2
    );
    assert!(specs(&["--no-prewarm"]).is_empty());
    assert!(specs(&["--no-prewarm", "--prewarm", "minimal:1:512"]).is_empty());
    for bad in [
        "minimal",
        "minimal:1",
        "minimal:0:512",
        "minimal:1:64",
        "Big:1:512",
    ] {
        assert!(
            Cli::try_parse_from(["wrenn", "--prewarm", bad]).is_err(),
            "{bad} accepted"
        );
    }
}
