//! The Docker deployment without a Docker engine: `docker-compose.yml`
//! against the Compose Specification's JSON Schema, the files, variables
//! and ports that it and the `Dockerfile` reference, and the image's
//! command run through the real `switchyard` binary.
//!
//! The schema comes from the npm package dclint, which `bash .ci/run`
//! installs (see [`COMPOSE_SCHEMA_INSTALL`]). Compose values are
//! interpolated with the values of `.env.example`, as `docker compose`
//! does with a `.env` copied from it.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value;
use switchyard_tests::deployment::{
    Dockerfile, PortMapping, dockerignore_keeps, expand_source, host_and_port, interpolate_tree,
    literal_text, manifest_variables, read_env_file, references, strings,
};
use switchyard_tests::{repo_root, switchyard_binary};

/// Environment variable naming the Compose Specification JSON Schema file.
const COMPOSE_SCHEMA_VARIABLE: &str = "SWITCHYARD_COMPOSE_SCHEMA";

/// Schema file inside the dclint package.
const COMPOSE_SCHEMA_IN_PACKAGE: &str = "node_modules/dclint/schemas/compose.schema.json";

/// The command that installs the schema where this test looks by default.
const COMPOSE_SCHEMA_INSTALL: &str = "npm install --prefix ~/.cache/switchyard/npm dclint@3.1.0";

/// The runtime's environment variables that the manifests read.
const LISTEN_VARIABLE: &str = "SWITCHYARD_LISTEN";
const RABBITMQ_VARIABLE: &str = "RABBITMQ_URL";
const KAFKA_VARIABLE: &str = "KAFKA_BOOTSTRAP";

/// The repository's deployment files, read and parsed.
struct Deployment {
    /// docker-compose.yml as written.
    raw: Value,
    /// docker-compose.yml with the values of `.env.example` substituted.
    compose: Value,
    env_example: BTreeMap<String, String>,
    dockerfile: Dockerfile,
}

impl Deployment {
    fn load() -> Deployment {
        let root = repo_root();
        let text = read(&root.join("docker-compose.yml"));
        let raw: Value = serde_saphyr::from_str(&text)
            .unwrap_or_else(|err| panic!("docker-compose.yml is not valid YAML: {err}"));
        let env_example = read_env_file(&read(&root.join(".env.example")))
            .unwrap_or_else(|err| panic!(".env.example: {err:#}"));
        let compose = interpolate_tree(&raw, &env_example).unwrap_or_else(|err| {
            panic!("docker-compose.yml does not interpolate with .env.example: {err:#}")
        });
        let dockerfile =
            Dockerfile::read(&root.join("Dockerfile")).unwrap_or_else(|err| panic!("{err:#}"));
        Deployment {
            raw,
            compose,
            env_example,
            dockerfile,
        }
    }

    /// Returns the interpolated service, or fails naming it.
    fn service(&self, name: &str) -> &Value {
        let service = &self.compose["services"][name];
        assert!(
            service.is_object(),
            "docker-compose.yml has no service `{name}`"
        );
        service
    }

    /// Returns one interpolated environment variable of a service.
    fn environment(&self, service: &str, variable: &str) -> String {
        environment(self.service(service))
            .remove(variable)
            .unwrap_or_else(|| panic!("service `{service}` does not set {variable}"))
    }

    /// Returns the manifests that the image's command runs, relative to the
    /// repository root, which has the layout of the image's WORKDIR.
    fn command_manifests(&self) -> Vec<String> {
        let command = self
            .dockerfile
            .exec_form("CMD")
            .unwrap_or_else(|err| panic!("{err:#}"));
        command
            .iter()
            .skip(1)
            .filter(|argument| !argument.starts_with("--"))
            .cloned()
            .collect()
    }

    /// Returns each variable the image's manifests reference, with its
    /// default, or fails when a manifest is missing.
    fn manifest_variables(&self) -> BTreeMap<String, Option<String>> {
        let mut variables = BTreeMap::new();
        for manifest in self.command_manifests() {
            let path = repo_root().join(&manifest);
            assert!(
                path.is_file(),
                "{manifest}, named in the Dockerfile's CMD, does not exist"
            );
            variables.extend(manifest_variables(&path).unwrap_or_else(|err| panic!("{err:#}")));
        }
        variables
    }

    /// Returns the port of a manifest variable's default address or URL.
    fn manifest_default_port(&self, variable: &str) -> u16 {
        let variables = self.manifest_variables();
        let default = variables
            .get(variable)
            .unwrap_or_else(|| panic!("no manifest of the Dockerfile's CMD references {variable}"))
            .clone()
            .unwrap_or_else(|| panic!("the manifests' {variable} has no `:-` default"));
        address_port(&default)
    }
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path)
        .unwrap_or_else(|err| panic!("cannot read {}: {err}", path.display()))
}

/// Returns a service's `environment`, in map or `KEY=VALUE` list form.
fn environment(service: &Value) -> BTreeMap<String, String> {
    let scalar = |value: &Value| match value {
        Value::String(text) => text.clone(),
        Value::Null => String::new(),
        other => other.to_string(),
    };
    match &service["environment"] {
        Value::Object(map) => map
            .iter()
            .map(|(name, value)| (name.clone(), scalar(value)))
            .collect(),
        Value::Array(items) => items
            .iter()
            .filter_map(Value::as_str)
            .map(|item| {
                let (name, value) = item.split_once('=').unwrap_or((item, ""));
                (name.to_owned(), value.to_owned())
            })
            .collect(),
        _ => BTreeMap::new(),
    }
}

/// Returns the port of `HOST:PORT` or of a URL such as `amqp://host:5672/`.
fn address_port(address: &str) -> u16 {
    if address.contains("://") {
        let url = reqwest::Url::parse(address).unwrap_or_else(|err| panic!("`{address}`: {err}"));
        return url
            .port()
            .unwrap_or_else(|| panic!("`{address}` names no port"));
    }
    host_and_port(address)
        .unwrap_or_else(|err| panic!("{err:#}"))
        .1
}

/// Returns a service's port mappings, parsed.
fn port_mappings(service: &Value) -> Vec<PortMapping> {
    service["ports"]
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or_default()
        .iter()
        .map(|port| {
            let text = port
                .as_str()
                .unwrap_or_else(|| panic!("port `{port}` is not in the short string syntax"));
            PortMapping::parse(text).unwrap_or_else(|err| panic!("{err:#}"))
        })
        .collect()
}

/// Returns the healthcheck's command as a list, without `CMD`.
fn healthcheck_command(name: &str, service: &Value) -> Vec<String> {
    let test = &service["healthcheck"]["test"];
    let words: Vec<String> = test
        .as_array()
        .unwrap_or_else(|| panic!("service `{name}`: healthcheck.test is not a list"))
        .iter()
        .map(|word| word.as_str().unwrap_or_default().to_owned())
        .collect();
    assert_eq!(
        words.first().map(String::as_str),
        Some("CMD"),
        "service `{name}`: healthcheck.test should start with CMD"
    );
    words[1..].to_vec()
}

fn compose_schema_path() -> PathBuf {
    if let Some(path) = std::env::var_os(COMPOSE_SCHEMA_VARIABLE) {
        return PathBuf::from(path);
    }
    let home = std::env::var_os("HOME").unwrap_or_default();
    PathBuf::from(home)
        .join(".cache/switchyard/npm")
        .join(COMPOSE_SCHEMA_IN_PACKAGE)
}

#[test]
fn compose_matches_compose_schema() {
    let path = compose_schema_path();
    assert!(
        path.is_file(),
        "the Compose Specification schema is missing at {}; install it with \
         `{COMPOSE_SCHEMA_INSTALL}` (bash .ci/run does), or set {COMPOSE_SCHEMA_VARIABLE} \
         to a copy of compose-spec's compose-spec.json",
        path.display()
    );
    let schema: Value = serde_json::from_str(&read(&path))
        .unwrap_or_else(|err| panic!("{} is not JSON: {err}", path.display()));
    assert_eq!(
        schema["title"],
        "Compose Specification",
        "{} is not the Compose Specification schema",
        path.display()
    );
    let validator = jsonschema::validator_for(&schema)
        .unwrap_or_else(|err| panic!("cannot compile {}: {err}", path.display()));

    let deployment = Deployment::load();
    let errors: Vec<String> = validator
        .iter_errors(&deployment.compose)
        .map(|error| format!("{}: {error}", error.instance_path()))
        .collect();
    assert!(
        errors.is_empty(),
        "docker-compose.yml fails the Compose Specification schema:\n{}",
        errors.join("\n")
    );
}

#[test]
fn compose_variables_in_env_example() {
    let deployment = Deployment::load();
    let mut used = BTreeSet::new();
    for value in strings(&deployment.raw) {
        for reference in references(value).unwrap_or_else(|err| panic!("{err:#}")) {
            if let Some(example) = deployment.env_example.get(&reference.name)
                && reference.operator == ":-"
            {
                assert_eq!(
                    example, &reference.operand,
                    "{}: .env.example and the default in docker-compose.yml differ",
                    reference.name
                );
            }
            used.insert(reference.name);
        }
    }
    for name in &used {
        assert!(
            deployment.env_example.contains_key(name),
            "docker-compose.yml references {name}, which .env.example does not list"
        );
    }
    for name in deployment.env_example.keys() {
        assert!(
            used.contains(name),
            ".env.example lists {name}, which docker-compose.yml does not use"
        );
    }
}

#[test]
fn compose_has_no_literal_credentials() {
    let deployment = Deployment::load();
    let rabbitmq = environment(&deployment.raw["services"]["rabbitmq"]);
    for name in ["RABBITMQ_DEFAULT_USER", "RABBITMQ_DEFAULT_PASS"] {
        let value = rabbitmq
            .get(name)
            .unwrap_or_else(|| panic!("service `rabbitmq` does not set {name}"));
        assert!(
            literal_text(value).unwrap().is_empty(),
            "service `rabbitmq`: {name} should be a ${{VAR}} reference, not `{value}`"
        );
    }

    let url = environment(&deployment.raw["services"]["switchyard"])
        .remove(RABBITMQ_VARIABLE)
        .unwrap_or_else(|| panic!("service `switchyard` does not set {RABBITMQ_VARIABLE}"));
    let user_info = url
        .split_once("://")
        .and_then(|(_, rest)| rest.rsplit_once('@'))
        .map(|(user_info, _)| user_info)
        .unwrap_or_else(|| panic!("{RABBITMQ_VARIABLE} `{url}` has no user"));
    assert_eq!(
        literal_text(user_info).unwrap(),
        ":",
        "the user and password in {RABBITMQ_VARIABLE} `{url}` should be ${{VAR}} references only"
    );
}

#[test]
fn compose_paths_exist() {
    let deployment = Deployment::load();
    let root = repo_root();
    let services = deployment.compose["services"].as_object().unwrap();
    for (name, service) in services {
        let build = &service["build"];
        if !build.is_null() {
            let context = build
                .as_str()
                .or_else(|| build["context"].as_str())
                .unwrap_or(".");
            let dockerfile = build["dockerfile"].as_str().unwrap_or("Dockerfile");
            let path = root.join(context).join(dockerfile);
            assert!(
                path.is_file(),
                "service `{name}` builds from {}, which does not exist",
                path.display()
            );
        }
        for volume in service["volumes"]
            .as_array()
            .map(Vec::as_slice)
            .unwrap_or_default()
        {
            let Some(source) = volume.as_str().and_then(|text| text.split(':').next()) else {
                continue;
            };
            if source.starts_with('.') || source.starts_with('/') {
                let path = root.join(source);
                assert!(
                    path.exists(),
                    "service `{name}` mounts {source}, which does not exist"
                );
            } else {
                assert!(
                    deployment.compose["volumes"].get(source).is_some(),
                    "service `{name}` mounts the volume `{source}`, which the top-level volumes do not declare"
                );
            }
        }
    }
}

#[test]
fn long_running_services_have_healthchecks() {
    let deployment = Deployment::load();
    let services = deployment.compose["services"].as_object().unwrap();
    for (name, service) in services {
        let command = healthcheck_command(name, service);
        assert!(
            !command.is_empty(),
            "service `{name}` has an empty healthcheck"
        );
        assert_ne!(
            service["healthcheck"]["disable"],
            Value::Bool(true),
            "service `{name}` disables its healthcheck"
        );
        let Some(dependencies) = service.get("depends_on") else {
            continue;
        };
        let dependencies = dependencies.as_object().unwrap_or_else(|| {
            panic!("service `{name}`: depends_on should be a map with a condition per service")
        });
        for (dependency, settings) in dependencies {
            assert_eq!(
                settings["condition"], "service_healthy",
                "service `{name}` should wait for `{dependency}` to be healthy"
            );
            assert!(
                services.contains_key(dependency),
                "service `{name}` depends on `{dependency}`, which does not exist"
            );
        }
    }
    for (name, dependency) in [
        ("switchyard", "rabbitmq"),
        ("switchyard", "kafka"),
        ("proxy", "switchyard"),
    ] {
        assert!(
            services[name]["depends_on"].get(dependency).is_some(),
            "service `{name}` should depend on `{dependency}`"
        );
    }
}

#[test]
fn switchyard_healthcheck_probes_readyz() {
    let deployment = Deployment::load();
    let listen = deployment.environment("switchyard", LISTEN_VARIABLE);
    let port = address_port(&listen);
    let command = healthcheck_command("switchyard", deployment.service("switchyard"));
    let url = format!("http://127.0.0.1:{port}/readyz");
    assert!(
        command.contains(&url),
        "switchyard's healthcheck {command:?} should request {url}"
    );

    // The probe's program must be installed in the image.
    let program = &command[0];
    let installed = deployment.dockerfile.final_instructions("RUN").any(|run| {
        run.arguments.contains("install")
            && run.arguments.split_whitespace().any(|word| word == program)
    });
    assert!(
        installed,
        "switchyard's healthcheck runs `{program}`, which the Dockerfile's final stage does not install"
    );
}

#[test]
fn switchyard_scales_behind_proxy() {
    let deployment = Deployment::load();
    let switchyard = deployment.service("switchyard");
    assert!(
        switchyard.get("ports").is_none(),
        "service `switchyard` publishes ports, so a second replica would find them taken"
    );
    assert!(
        switchyard.get("container_name").is_none(),
        "service `switchyard` sets container_name, which --scale cannot repeat"
    );
    let listen_port = address_port(&deployment.environment("switchyard", LISTEN_VARIABLE));

    let proxy = deployment.service("proxy");
    let mappings = port_mappings(proxy);
    assert_eq!(mappings.len(), 1, "service `proxy` should publish one port");
    let config_source = proxy["volumes"][0]
        .as_str()
        .and_then(|volume| volume.split(':').next())
        .expect("service `proxy` mounts its nginx configuration first");
    let config = read(&repo_root().join(config_source));

    let upstream = format!("http://switchyard:{listen_port}");
    assert!(
        config.contains(&format!("set $switchyard {upstream};")),
        "{config_source} should send requests to {upstream}"
    );
    assert!(
        config.contains("proxy_pass $switchyard;"),
        "{config_source} should name the upstream through a variable, so nginx re-resolves it"
    );
    assert!(
        config.contains("resolver 127.0.0.11"),
        "{config_source} should resolve through Docker's DNS server"
    );
    let listens: Vec<u16> = config
        .lines()
        .filter_map(|line| line.trim().strip_prefix("listen "))
        .map(|port| {
            port.trim_end_matches(';')
                .parse()
                .expect("listen takes a port")
        })
        .collect();
    assert_eq!(
        listens.first(),
        Some(&mappings[0].target),
        "the proxy's published port should reach its first `listen`"
    );
    let health_url = format!("http://127.0.0.1:{}/healthz", listens[1]);
    assert!(
        healthcheck_command("proxy", proxy).contains(&health_url),
        "the proxy's healthcheck should request {health_url}"
    );
}

#[test]
fn compose_ports_match_manifest_defaults() {
    let deployment = Deployment::load();

    // The proxy publishes switchyard where the manifests listen by default,
    // so the README's requests work against compose unchanged.
    let listen_port = deployment.manifest_default_port(LISTEN_VARIABLE);
    let proxy = port_mappings(deployment.service("proxy"));
    assert_eq!(
        proxy[0].published,
        Some(listen_port),
        "proxy's published port"
    );
    let container_listen = deployment.environment("switchyard", LISTEN_VARIABLE);
    let (host, port) = host_and_port(&container_listen).unwrap();
    assert_eq!(
        host, "0.0.0.0",
        "switchyard should listen on every interface of its container"
    );
    assert_eq!(
        port, listen_port,
        "switchyard's listen port in the container"
    );

    // RabbitMQ: switchyard reaches it by service name on the default port,
    // and the host reaches the published port with the manifests' default.
    let amqp_port = deployment.manifest_default_port(RABBITMQ_VARIABLE);
    let url = deployment.environment("switchyard", RABBITMQ_VARIABLE);
    let url = reqwest::Url::parse(&url).unwrap_or_else(|err| panic!("{RABBITMQ_VARIABLE}: {err}"));
    assert_eq!(url.host_str(), Some("rabbitmq"), "{RABBITMQ_VARIABLE} host");
    assert_eq!(url.port(), Some(amqp_port), "{RABBITMQ_VARIABLE} port");
    let rabbitmq = port_mappings(deployment.service("rabbitmq"));
    assert!(
        rabbitmq
            .iter()
            .any(|mapping| mapping.published == Some(amqp_port) && mapping.target == amqp_port),
        "service `rabbitmq` should publish {amqp_port}:{amqp_port}, got {rabbitmq:?}"
    );

    // Kafka: switchyard bootstraps from a listener that advertises the same
    // address, and the published port is the manifests' default and is
    // advertised as 127.0.0.1 for clients on the host.
    let kafka_port = deployment.manifest_default_port(KAFKA_VARIABLE);
    let bootstrap = deployment.environment("switchyard", KAFKA_VARIABLE);
    let listeners = listener_ports(&deployment.environment("kafka", "KAFKA_LISTENERS"));
    let advertised =
        listener_addresses(&deployment.environment("kafka", "KAFKA_ADVERTISED_LISTENERS"));
    assert!(
        advertised.values().any(|address| *address == bootstrap),
        "{KAFKA_VARIABLE} `{bootstrap}` is not one of Kafka's advertised listeners {advertised:?}"
    );
    let kafka = port_mappings(deployment.service("kafka"));
    assert_eq!(kafka.len(), 1, "service `kafka` should publish one port");
    assert_eq!(
        kafka[0].published,
        Some(kafka_port),
        "Kafka's published port"
    );
    let (host_listener, _) = listeners
        .iter()
        .find(|(_, port)| **port == kafka[0].target)
        .unwrap_or_else(|| {
            panic!(
                "no Kafka listener on the published target port {}",
                kafka[0].target
            )
        });
    assert_eq!(
        advertised.get(host_listener).map(String::as_str),
        Some(format!("127.0.0.1:{kafka_port}").as_str()),
        "the published Kafka listener `{host_listener}` should advertise the host's address"
    );
    for (name, address) in &advertised {
        let (_, port) = host_and_port(address).unwrap();
        assert_eq!(
            listeners.get(name),
            Some(&port),
            "Kafka's advertised listener {name} and KAFKA_LISTENERS disagree on the port"
        );
    }
}

/// Parses Kafka's `NAME://HOST:PORT,...` list into listener names and ports.
fn listener_ports(listeners: &str) -> BTreeMap<String, u16> {
    listener_addresses(listeners)
        .into_iter()
        .map(|(name, address)| {
            let port = address
                .rsplit_once(':')
                .and_then(|(_, port)| port.parse().ok())
                .unwrap_or_else(|| panic!("Kafka listener {name} `{address}` has no port"));
            (name, port)
        })
        .collect()
}

/// Parses Kafka's `NAME://HOST:PORT,...` list into listener names and
/// `HOST:PORT`.
fn listener_addresses(listeners: &str) -> BTreeMap<String, String> {
    listeners
        .split(',')
        .map(|listener| {
            let (name, address) = listener
                .split_once("://")
                .unwrap_or_else(|| panic!("Kafka listener `{listener}` is not NAME://HOST:PORT"));
            (name.to_owned(), address.to_owned())
        })
        .collect()
}

#[test]
fn kafka_kraft_configuration_complete() {
    let deployment = Deployment::load();
    let kafka = environment(deployment.service("kafka"));
    let get = |name: &str| -> &str {
        kafka
            .get(name)
            .unwrap_or_else(|| panic!("service `kafka` does not set {name}"))
    };
    for name in [
        "CLUSTER_ID",
        "KAFKA_NODE_ID",
        "KAFKA_LISTENER_SECURITY_PROTOCOL_MAP",
        "KAFKA_INTER_BROKER_LISTENER_NAME",
        "KAFKA_LOG_DIRS",
        "KAFKA_OFFSETS_TOPIC_REPLICATION_FACTOR",
        "KAFKA_TRANSACTION_STATE_LOG_REPLICATION_FACTOR",
        "KAFKA_TRANSACTION_STATE_LOG_MIN_ISR",
    ] {
        assert!(!get(name).is_empty(), "service `kafka`: {name} is empty");
    }
    assert_eq!(get("KAFKA_PROCESS_ROLES"), "broker,controller");
    assert_eq!(get("KAFKA_OFFSETS_TOPIC_REPLICATION_FACTOR"), "1");
    assert_eq!(get("KAFKA_TRANSACTION_STATE_LOG_REPLICATION_FACTOR"), "1");

    let node_id = get("KAFKA_NODE_ID");
    let voters = get("KAFKA_CONTROLLER_QUORUM_VOTERS");
    let controller = get("KAFKA_CONTROLLER_LISTENER_NAMES");
    let listeners = listener_ports(get("KAFKA_LISTENERS"));
    let controller_port = listeners
        .get(controller)
        .unwrap_or_else(|| panic!("KAFKA_LISTENERS has no {controller} listener"));
    assert_eq!(
        voters,
        format!("{node_id}@kafka:{controller_port}"),
        "KAFKA_CONTROLLER_QUORUM_VOTERS should name this node's controller listener"
    );

    let protocols: BTreeSet<&str> = get("KAFKA_LISTENER_SECURITY_PROTOCOL_MAP")
        .split(',')
        .filter_map(|pair| pair.split_once(':').map(|(name, _)| name))
        .collect();
    for name in listeners.keys() {
        assert!(
            protocols.contains(name.as_str()),
            "listener {name} has no entry in KAFKA_LISTENER_SECURITY_PROTOCOL_MAP"
        );
    }
    let advertised = listener_addresses(get("KAFKA_ADVERTISED_LISTENERS"));
    assert!(
        !advertised.contains_key(controller),
        "the controller listener must not be advertised"
    );
    assert!(
        advertised.contains_key(get("KAFKA_INTER_BROKER_LISTENER_NAME")),
        "the inter-broker listener must be advertised"
    );
}

#[test]
fn broker_data_in_volumes() {
    let deployment = Deployment::load();
    let kafka_data = deployment.environment("kafka", "KAFKA_LOG_DIRS");
    for (service, folder) in [
        ("rabbitmq", "/var/lib/rabbitmq"),
        ("kafka", kafka_data.as_str()),
    ] {
        let volumes = deployment.service(service)["volumes"]
            .as_array()
            .unwrap_or_else(|| panic!("service `{service}` has no volumes"));
        let named = volumes.iter().filter_map(Value::as_str).find_map(|volume| {
            let (source, target) = volume.split_once(':')?;
            (target.trim_end_matches(":rw") == folder && !source.starts_with(['.', '/']))
                .then_some(source)
        });
        let source = named
            .unwrap_or_else(|| panic!("service `{service}` keeps {folder} in no named volume"));
        assert!(
            deployment.compose["volumes"].get(source).is_some(),
            "volume `{source}` is not declared at the top level"
        );
    }
}

#[test]
fn dockerfile_copy_sources_in_context() {
    let deployment = Deployment::load();
    let root = repo_root();
    let dockerignore = read(&root.join(".dockerignore"));
    let copies = deployment
        .dockerfile
        .copies()
        .unwrap_or_else(|err| panic!("{err:#}"));
    assert!(!copies.is_empty(), "the Dockerfile copies nothing");
    for copy in copies.iter().filter(|copy| copy.from.is_none()) {
        for source in &copy.sources {
            let found = expand_source(root, source).unwrap_or_else(|err| panic!("{err:#}"));
            assert!(
                !found.is_empty(),
                "the Dockerfile copies `{source}`, which does not exist"
            );
            for path in found {
                assert!(
                    dockerignore_keeps(&dockerignore, &path),
                    "the Dockerfile copies `{path}`, which .dockerignore leaves out of the build context"
                );
            }
        }
    }
}

#[test]
fn dockerfile_multistage_non_root() {
    let deployment = Deployment::load();
    let dockerfile = &deployment.dockerfile;
    let images: Vec<&str> = dockerfile
        .instructions
        .iter()
        .filter(|i| i.keyword == "FROM")
        .map(|i| i.arguments.as_str())
        .collect();
    assert!(
        images.len() >= 2,
        "the Dockerfile should build in a separate stage: {images:?}"
    );
    assert!(
        images[0].starts_with("rust:1.95"),
        "the build stage should use rust:1.95, the workspace's rust-version: {}",
        images[0]
    );

    let user = dockerfile
        .final_instructions("USER")
        .last()
        .map(|user| user.arguments.clone())
        .expect("the final stage sets no USER, so the image runs as root");
    let name = user.split(':').next().unwrap_or_default();
    assert!(
        name != "root" && name != "0",
        "the image runs as `{user}`, which is root"
    );
}

#[test]
fn dockerfile_keeps_repository_layout() {
    // Manifests find schemas and handlers through relative paths such as
    // `../handlers/`, so the image must copy each folder to the same place
    // under its WORKDIR as in the repository.
    let deployment = Deployment::load();
    let dockerfile = &deployment.dockerfile;
    let workdir = dockerfile
        .final_workdir()
        .expect("the final stage sets no WORKDIR");
    let copies = dockerfile.copies().unwrap();
    let mut copied = BTreeSet::new();
    for copy in copies
        .iter()
        .filter(|copy| copy.stage == dockerfile.final_stage() && copy.from.is_none())
    {
        for source in &copy.sources {
            let folder = source
                .rsplit_once('/')
                .map_or(source.as_str(), |(folder, _)| folder);
            let expected = if source.contains('*') {
                folder
            } else {
                source.as_str()
            };
            let destination = copy.destination.trim_end_matches('/');
            let destination = destination
                .strip_prefix(&format!("{workdir}/"))
                .unwrap_or(destination);
            assert_eq!(
                destination, expected,
                "COPY {source} should go to {workdir}/{expected}, not {}",
                copy.destination
            );
            copied.insert(expected.to_owned());
        }
    }
    for folder in ["manifests", "schemas", "handlers"] {
        assert!(copied.contains(folder), "the image does not copy {folder}/");
    }
}

#[test]
fn image_command_accepted_by_binary() {
    let deployment = Deployment::load();
    let dockerfile = &deployment.dockerfile;
    let entrypoint = dockerfile
        .exec_form("ENTRYPOINT")
        .unwrap_or_else(|err| panic!("{err:#}"));
    let command = dockerfile
        .exec_form("CMD")
        .unwrap_or_else(|err| panic!("{err:#}"));

    // ENTRYPOINT names the binary that the final stage copies onto PATH.
    assert_eq!(
        entrypoint.len(),
        1,
        "ENTRYPOINT should be the binary alone: {entrypoint:?}"
    );
    let installed: Vec<String> = dockerfile
        .copies()
        .unwrap()
        .into_iter()
        .filter(|copy| copy.stage == dockerfile.final_stage() && copy.from.is_some())
        .map(|copy| copy.destination)
        .collect();
    let program = &entrypoint[0];
    let on_path = ["/usr/local/bin", "/usr/bin"].map(|folder| format!("{folder}/{program}"));
    assert!(
        installed
            .iter()
            .any(|path| path == program || on_path.contains(path)),
        "ENTRYPOINT runs `{program}`, but the final stage copies the build output to {installed:?}"
    );
    assert_eq!(
        program, "switchyard",
        "ENTRYPOINT should run the switchyard binary"
    );

    // Every option of CMD is one the subcommand accepts.
    let binary = switchyard_binary();
    let subcommand = command.first().expect("CMD is empty");
    let help = Command::new(binary)
        .args([subcommand.as_str(), "--help"])
        .output()
        .expect("the switchyard binary runs");
    assert!(
        help.status.success(),
        "`switchyard {subcommand} --help` failed:\n{}",
        String::from_utf8_lossy(&help.stderr)
    );
    let help = String::from_utf8_lossy(&help.stdout);
    for option in command.iter().filter(|argument| argument.starts_with("--")) {
        let name = option.split('=').next().unwrap_or_default();
        assert!(
            help.contains(name),
            "CMD passes {option}, which `switchyard {subcommand}` does not list:\n{help}"
        );
    }

    // `check` loads the same manifests with the switchyard service's
    // environment, from a folder with the image's layout.
    // NOTE: options in CMD must be written `--option=value`; a value given
    // as a separate word would be taken for a manifest here.
    let manifests = deployment.command_manifests();
    assert!(!manifests.is_empty(), "CMD names no manifest");
    let output = Command::new(binary)
        .arg("check")
        .args(&manifests)
        .args(["--format", "json"])
        .envs(environment(deployment.service("switchyard")))
        .current_dir(repo_root())
        .output()
        .expect("the switchyard binary runs");
    assert!(
        output.status.success(),
        "`switchyard check {}` failed with {}:\n{}{}",
        manifests.join(" "),
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

#[test]
fn compose_sets_every_manifest_variable() {
    // Inside a container the manifests' defaults point at 127.0.0.1, where no
    // broker runs, so the switchyard service must set every variable.
    let deployment = Deployment::load();
    let set = environment(deployment.service("switchyard"));
    for name in deployment.manifest_variables().keys() {
        assert!(
            set.contains_key(name),
            "the manifests read {name}, which service `switchyard` does not set"
        );
    }
}
