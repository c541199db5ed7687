//! `keel`: the command-line client. Speaks DynamoDB JSON and prints the AWS
//! CLI's JSON shapes (`{"Item": …}`, `{"Items": […], "Count": n, …}`).
//! Exit status: 0 success, 254 the service answered with an error, 255 the
//! service could not be reached, 2 usage errors.

use std::process::ExitCode;

mod dev;

use clap::{Parser, Subcommand};
use keel_wire::client::{BlockingClient, Client, ClientConfig, ClientError};
use keel_wire::item::{self, Item};
use keel_wire::protocol::NodeStatus;
use keel_wire::protocol::{ExpressionArgs, KeyKind, Request, ReturnValues, TableInfo};
use keel_wire::routing;
use serde_json::{Value as Json, json};

#[derive(Debug, Parser)]
#[command(name = "keel", version, about = "Keel command-line client")]
struct Cli {
    /// host:port of a keel-node (or router); several, comma-separated, for
    /// the nodes of a cluster (requests follow the leader's hints).
    #[arg(long, global = true, default_value = "127.0.0.1:7400", env = "KEEL_ENDPOINT")]
    endpoint: String,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Starts a local cluster on loopback: three nodes in three zones, a
    /// control plane, two MemDS servers and a router; Ctrl-C stops it.
    Dev(dev::DevArgs),
    /// A router's admin port: its counters, or a cache flush.
    Router {
        /// The router's admin endpoint (`keel dev`: the router's port + 1).
        #[arg(long, default_value = "127.0.0.1:7401", env = "KEEL_ROUTER_ADMIN")]
        admin: String,
        #[command(subcommand)]
        command: RouterCommand,
    },
    /// The cluster: nodes, zones, health, and every partition's replicas.
    Cluster {
        #[command(subcommand)]
        command: ClusterCommand,
    },
    /// Create, list, describe and delete tables.
    Table {
        #[command(subcommand)]
        command: TableCommand,
    },
    /// PutItem.
    Put {
        table: String,
        /// The item in DynamoDB JSON.
        item: String,
        #[command(flatten)]
        write: WriteArgs,
    },
    /// GetItem.
    Get {
        table: String,
        /// The key in DynamoDB JSON.
        key: String,
        #[arg(long)]
        consistent: bool,
        #[arg(long)]
        projection: Option<String>,
        /// ExpressionAttributeNames as JSON.
        #[arg(long)]
        names: Option<String>,
    },
    /// DeleteItem.
    Delete {
        table: String,
        key: String,
        #[command(flatten)]
        write: WriteArgs,
    },
    /// UpdateItem.
    Update {
        table: String,
        key: String,
        /// UpdateExpression.
        #[arg(long)]
        update: String,
        #[command(flatten)]
        write: WriteArgs,
    },
    /// Query.
    Query {
        table: String,
        /// KeyConditionExpression.
        #[arg(long)]
        key_condition: String,
        #[command(flatten)]
        read: ReadArgs,
        /// Descending sort-key order (ScanIndexForward = false).
        #[arg(long)]
        reverse: bool,
    },
    /// Scan.
    Scan {
        table: String,
        #[command(flatten)]
        read: ReadArgs,
        #[arg(long, default_value_t = 0)]
        segment: u32,
        #[arg(long, default_value_t = 1)]
        total_segments: u32,
    },
}

#[derive(Debug, Subcommand)]
enum RouterCommand {
    /// Requests, cache hits and misses, MemDS lookups sent and answered.
    Status,
    /// Drops the routing cache; with --every-ms, again and again for
    /// --for-s seconds (to measure a cold cache under load).
    Flush {
        #[arg(long)]
        every_ms: Option<u64>,
        #[arg(long, default_value_t = 10)]
        for_s: u64,
    },
}

#[derive(Debug, Subcommand)]
enum TableCommand {
    /// CreateTable.
    Create {
        name: String,
        /// Partition key as NAME:S|N|B.
        #[arg(long)]
        pk: String,
        /// Sort key as NAME:S|N|B.
        #[arg(long)]
        sk: Option<String>,
        /// Hash-range partitions (0: server default).
        #[arg(long, default_value_t = 0)]
        partitions: u32,
    },
    /// ListTables.
    List,
    /// DescribeTable.
    Describe { name: String },
    /// DeleteTable.
    Delete { name: String },
}

#[derive(Debug, clap::Args)]
struct WriteArgs {
    /// ConditionExpression.
    #[arg(long)]
    condition: Option<String>,
    /// ExpressionAttributeNames as JSON ({"#n": "name"}).
    #[arg(long)]
    names: Option<String>,
    /// ExpressionAttributeValues as DynamoDB JSON ({":v": {"S": "x"}}).
    #[arg(long)]
    values: Option<String>,
    /// ReturnValues: NONE, ALL_OLD, UPDATED_OLD, ALL_NEW, UPDATED_NEW.
    #[arg(long = "return", default_value = "NONE")]
    return_values: String,
}

#[derive(Debug, Subcommand)]
enum ClusterCommand {
    /// Asks every node named in --endpoint for its view and merges them:
    /// nodes (zone, health) and per partition its replicas, leader, term
    /// and each replica's applied index. A router answers for the whole
    /// cluster, and lists itself, its MemDS servers and the control plane.
    Status {
        /// Print JSON instead of tables.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Debug, clap::Args)]
struct ReadArgs {
    /// FilterExpression.
    #[arg(long)]
    filter: Option<String>,
    /// ProjectionExpression.
    #[arg(long)]
    projection: Option<String>,
    #[arg(long)]
    names: Option<String>,
    #[arg(long)]
    values: Option<String>,
    /// Items to evaluate at most.
    #[arg(long, default_value_t = 0)]
    limit: u32,
    /// ExclusiveStartKey in DynamoDB JSON.
    #[arg(long)]
    start_key: Option<String>,
    /// ConsistentRead: read from the leader (in a cluster).
    #[arg(long)]
    consistent: bool,
}

/// A usage error: bad JSON, bad key spec.
#[derive(Debug)]
struct Usage(String);

fn parse_json(text: &str, what: &str) -> Result<Json, Usage> {
    serde_json::from_str(text).map_err(|e| Usage(format!("{what} is not valid JSON: {e}")))
}

fn parse_item(text: &str, what: &str) -> Result<Item, Usage> {
    item::from_json(&parse_json(text, what)?).map_err(|e| Usage(format!("{what}: {e}")))
}

fn parse_args(names: Option<&str>, values: Option<&str>) -> Result<ExpressionArgs, Usage> {
    let mut args = ExpressionArgs::default();
    if let Some(text) = names {
        let json = parse_json(text, "--names")?;
        let object = json.as_object().ok_or_else(|| Usage("--names must be a JSON object".into()))?;
        for (k, v) in object {
            let name = v.as_str().ok_or_else(|| Usage(format!("--names: {k} must map to a string")))?;
            args.names.push((k.clone(), name.to_owned()));
        }
    }
    if let Some(text) = values {
        let json = parse_json(text, "--values")?;
        let object = json.as_object().ok_or_else(|| Usage("--values must be a JSON object".into()))?;
        for (k, v) in object {
            let value = item::value_from_json(v, k).map_err(|e| Usage(format!("--values: {e}")))?;
            args.values.push((k.clone(), value));
        }
    }
    Ok(args)
}

fn parse_key_spec(spec: &str) -> Result<(String, KeyKind), Usage> {
    let (name, kind) = spec.rsplit_once(':').ok_or_else(|| Usage(format!("key {spec:?} must be NAME:S|N|B")))?;
    let kind = match kind {
        "S" => KeyKind::S,
        "N" => KeyKind::N,
        "B" => KeyKind::B,
        other => return Err(Usage(format!("key type {other:?} must be S, N or B"))),
    };
    Ok((name.to_owned(), kind))
}

fn parse_return(text: &str) -> Result<ReturnValues, Usage> {
    Ok(match text {
        "NONE" => ReturnValues::None,
        "ALL_OLD" => ReturnValues::AllOld,
        "UPDATED_OLD" => ReturnValues::UpdatedOld,
        "ALL_NEW" => ReturnValues::AllNew,
        "UPDATED_NEW" => ReturnValues::UpdatedNew,
        other => {
            return Err(Usage(format!(
                "--return {other:?} must be NONE, ALL_OLD, UPDATED_OLD, ALL_NEW or UPDATED_NEW"
            )));
        }
    })
}

fn kind_name(kind: KeyKind) -> &'static str {
    match kind {
        KeyKind::S => "S",
        KeyKind::N => "N",
        KeyKind::B => "B",
    }
}

/// DescribeTable's shape in the AWS CLI.
fn table_json(info: &TableInfo) -> Json {
    let mut schema = vec![json!({"AttributeName": info.partition_key.0, "KeyType": "HASH"})];
    let mut definitions =
        vec![json!({"AttributeName": info.partition_key.0, "AttributeType": kind_name(info.partition_key.1)})];
    if let Some((name, kind)) = &info.sort_key {
        schema.push(json!({"AttributeName": name, "KeyType": "RANGE"}));
        definitions.push(json!({"AttributeName": name, "AttributeType": kind_name(*kind)}));
    }
    json!({
        "TableName": info.name,
        "KeySchema": schema,
        "AttributeDefinitions": definitions,
        "TableStatus": "ACTIVE",
        "CreationDateTime": info.created_at_ms as f64 / 1000.0,
        "Partitions": info.partitions,
    })
}

fn attributes_json(item: Option<Item>) -> Json {
    match item {
        Some(item) => json!({"Attributes": item::to_json(&item)}),
        None => json!({}),
    }
}

enum Failure {
    Usage(String),
    Client(ClientError),
}

impl From<Usage> for Failure {
    fn from(u: Usage) -> Self {
        Self::Usage(u.0)
    }
}

impl From<ClientError> for Failure {
    fn from(e: ClientError) -> Self {
        Self::Client(e)
    }
}

async fn run(client: &Client, command: Command) -> Result<Json, Failure> {
    Ok(match command {
        Command::Dev(_) | Command::Router { .. } => return Err(Failure::Usage("runs by itself".into())),
        // main asks every endpoint itself; this is the one-node view.
        Command::Cluster { .. } => {
            merge_status(&[(String::new(), client.cluster_status().await.map_err(|e| e.to_string()))])
        }
        Command::Table { command } => match command {
            TableCommand::Create { name, pk, sk, partitions } => {
                let pk = parse_key_spec(&pk)?;
                let sk = sk.as_deref().map(parse_key_spec).transpose()?;
                let info = client
                    .create_table(&name, (&pk.0, pk.1), sk.as_ref().map(|(n, k)| (n.as_str(), *k)), partitions)
                    .await?;
                json!({"TableDescription": table_json(&info)})
            }
            TableCommand::List => {
                let mut names = Vec::new();
                let mut start: Option<String> = None;
                loop {
                    let (page, last) = client.list_tables(start.as_deref(), 0).await?;
                    names.extend(page);
                    match last {
                        Some(last) => start = Some(last),
                        None => break,
                    }
                }
                json!({"TableNames": names})
            }
            TableCommand::Describe { name } => json!({"Table": table_json(&client.describe_table(&name).await?)}),
            TableCommand::Delete { name } => {
                json!({"TableDescription": table_json(&client.delete_table(&name).await?)})
            }
        },
        Command::Put { table, item, write } => {
            let item = parse_item(&item, "ITEM_JSON")?;
            let args = parse_args(write.names.as_deref(), write.values.as_deref())?;
            let mut builder = client.put_item(&table, item).return_values(parse_return(&write.return_values)?);
            builder = with_args(builder, write.condition.as_deref(), args);
            attributes_json(builder.send().await?)
        }
        Command::Get { table, key, consistent, projection, names } => {
            let key = parse_item(&key, "KEY_JSON")?;
            let args = parse_args(names.as_deref(), None)?;
            match client.get_item(&table, key, projection.as_deref(), args.names, consistent).await? {
                Some(item) => json!({"Item": item::to_json(&item)}),
                None => json!({}),
            }
        }
        Command::Delete { table, key, write } => {
            let key = parse_item(&key, "KEY_JSON")?;
            let args = parse_args(write.names.as_deref(), write.values.as_deref())?;
            let builder = client.delete_item(&table, key).return_values(parse_return(&write.return_values)?);
            attributes_json(with_args(builder, write.condition.as_deref(), args).send().await?)
        }
        Command::Update { table, key, update, write } => {
            let key = parse_item(&key, "KEY_JSON")?;
            let args = parse_args(write.names.as_deref(), write.values.as_deref())?;
            let builder = client.update_item(&table, key, &update).return_values(parse_return(&write.return_values)?);
            attributes_json(with_args(builder, write.condition.as_deref(), args).send().await?)
        }
        Command::Query { table, key_condition, read, reverse } => {
            let request = Request::Query {
                table,
                key_condition,
                filter: read.filter.clone(),
                projection: read.projection.clone(),
                args: parse_args(read.names.as_deref(), read.values.as_deref())?,
                limit: read.limit,
                exclusive_start_key: read.start_key.as_deref().map(|k| parse_item(k, "--start-key")).transpose()?,
                forward: !reverse,
                consistent_read: read.consistent,
            };
            page_json(client.page(&request).await?)
        }
        Command::Scan { table, read, segment, total_segments } => {
            let request = Request::Scan {
                table,
                filter: read.filter.clone(),
                projection: read.projection.clone(),
                args: parse_args(read.names.as_deref(), read.values.as_deref())?,
                limit: read.limit,
                exclusive_start_key: read.start_key.as_deref().map(|k| parse_item(k, "--start-key")).transpose()?,
                segment,
                total_segments,
                consistent_read: read.consistent,
            };
            page_json(client.page(&request).await?)
        }
    })
}

fn with_args<'c>(
    mut builder: keel_wire::client::WriteBuilder<'c>,
    condition: Option<&str>,
    args: ExpressionArgs,
) -> keel_wire::client::WriteBuilder<'c> {
    if let Some(condition) = condition {
        builder = builder.condition(condition);
    }
    for (placeholder, name) in &args.names {
        builder = builder.name(placeholder, name);
    }
    for (placeholder, value) in args.values {
        builder = builder.value(&placeholder, value);
    }
    builder
}

fn page_json(page: keel_wire::client::ItemsPage) -> Json {
    let mut out = json!({
        "Items": page.items.iter().map(item::to_json).collect::<Vec<_>>(),
        "Count": page.items.len(),
        "ScannedCount": page.scanned_count,
    });
    if let (Some(key), Some(object)) = (page.last_evaluated_key, out.as_object_mut()) {
        object.insert("LastEvaluatedKey".to_owned(), item::to_json(&key));
    }
    out
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let endpoints: Vec<&str> = cli.endpoint.split(',').map(str::trim).filter(|e| !e.is_empty()).collect();
    if let Command::Dev(args) = &cli.command {
        return dev::run(args);
    }
    if let Command::Router { admin, command } = &cli.command {
        return router_admin(admin, command);
    }
    if let Command::Cluster { command: ClusterCommand::Status { json } } = &cli.command {
        return cluster_status(&endpoints, *json);
    }
    let mut config =
        if endpoints.len() > 1 { ClientConfig::cluster(endpoints) } else { ClientConfig::new(cli.endpoint.clone()) };
    config.connections = 1;
    let client = match BlockingClient::connect(config) {
        Ok(client) => client,
        Err(e) => {
            eprintln!("Could not connect to the endpoint {}: {e}", cli.endpoint);
            return ExitCode::from(255);
        }
    };
    match client.run(async |c| run(c, cli.command).await) {
        Ok(output) => {
            use std::io::Write as _;
            // A closed pipe (`keel … | head`) is not an error of the command.
            let text = serde_json::to_string_pretty(&output).unwrap_or_default();
            let _ = writeln!(std::io::stdout().lock(), "{text}");
            ExitCode::SUCCESS
        }
        Err(Failure::Usage(message)) => {
            eprintln!("keel: {message}");
            ExitCode::from(2)
        }
        Err(Failure::Client(ClientError::Service { code, message })) => {
            eprintln!("An error occurred ({code:?}): {message}");
            ExitCode::from(254)
        }
        Err(Failure::Client(e)) => {
            eprintln!("keel: {e}");
            ExitCode::from(255)
        }
    }
}

/// One routing-protocol request to a router's admin port.
fn admin_call(admin: &str, body: &routing::Body) -> anyhow::Result<routing::MapStatus> {
    use std::io::{Read as _, Write as _};
    let mut stream = std::net::TcpStream::connect(admin)?;
    stream.set_read_timeout(Some(std::time::Duration::from_secs(5)))?;
    let mut frame = Vec::new();
    keel_wire::frame::encode_frame(&routing::encode(1, body), &mut frame);
    stream.write_all(&frame)?;
    let decoder = keel_wire::frame::FrameDecoder::default();
    let mut buf = Vec::new();
    let mut chunk = [0u8; 16 * 1024];
    let span = loop {
        if let Some(span) = decoder.decode(&buf)? {
            break span;
        }
        let n = stream.read(&mut chunk)?;
        anyhow::ensure!(n > 0, "the router closed the connection");
        buf.extend_from_slice(chunk.get(..n).unwrap_or(&[]));
    };
    match routing::decode(buf.get(span.body_start..span.end).unwrap_or(&[]))? {
        (_, routing::Body::StatusAnswer(status)) => Ok(status),
        (_, other) => anyhow::bail!("unexpected answer: {other:?}"),
    }
}

/// `keel router status|flush`.
fn router_admin(admin: &str, command: &RouterCommand) -> ExitCode {
    let outcome = match command {
        RouterCommand::Status => admin_call(admin, &routing::Body::Status),
        RouterCommand::Flush { every_ms: None, .. } => admin_call(admin, &routing::Body::FlushCache),
        RouterCommand::Flush { every_ms: Some(every), for_s } => {
            let end = std::time::Instant::now() + std::time::Duration::from_secs(*for_s);
            let mut flushes = 0u64;
            let mut last = admin_call(admin, &routing::Body::FlushCache);
            while last.is_ok() && std::time::Instant::now() < end {
                std::thread::sleep(std::time::Duration::from_millis(*every));
                last = admin_call(admin, &routing::Body::FlushCache);
                flushes += 1;
            }
            eprintln!("keel: {flushes} flushes");
            last
        }
    };
    match outcome {
        Ok(status) => {
            let counters: serde_json::Map<String, Json> =
                status.counters.into_iter().map(|(name, value)| (name, json!(value))).collect();
            println!("{}", serde_json::to_string_pretty(&Json::Object(counters)).unwrap_or_default());
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("keel: router admin {admin}: {e:#}");
            ExitCode::from(255)
        }
    }
}

/// What one endpoint said (or why it did not).
type Answered = (String, Result<NodeStatus, String>);

/// `keel cluster status`: every endpoint's view, merged.
fn cluster_status(endpoints: &[&str], as_json: bool) -> ExitCode {
    let answers: Vec<Answered> = endpoints
        .iter()
        .map(|endpoint| {
            let mut config = ClientConfig::new(*endpoint);
            config.connections = 1;
            config.retries_max = 0;
            config.request_timeout = std::time::Duration::from_secs(3);
            let status = BlockingClient::connect(config)
                .and_then(|client| client.run(async |c| c.cluster_status().await))
                .map_err(|e| e.to_string());
            ((*endpoint).to_owned(), status)
        })
        .collect();
    let merged = merge_status(&answers);
    use std::io::Write as _;
    let mut out = std::io::stdout().lock();
    let _ = if as_json {
        writeln!(out, "{}", serde_json::to_string_pretty(&merged).unwrap_or_default())
    } else {
        write!(out, "{}", status_text(&merged))
    };
    if answers.iter().any(|(_, a)| a.is_ok()) { ExitCode::SUCCESS } else { ExitCode::from(255) }
}

fn role_name(role: u8) -> &'static str {
    match role {
        3 => "leader",
        1 => "candidate",
        2 => "pre-candidate",
        _ => "follower",
    }
}

fn partition_name(partition: u64) -> String {
    if partition == 0 {
        "catalog".to_owned()
    } else {
        format!("table {} #{}", partition >> 32, partition & 0xffff_ffff)
    }
}

/// Nodes with health, and partitions with their replicas as each node sees
/// its own (JSON, the shape `--json` prints).
fn merge_status(answers: &[Answered]) -> Json {
    let statuses: Vec<(&str, &NodeStatus)> =
        answers.iter().filter_map(|(e, a)| a.as_ref().ok().map(|s| (e.as_str(), s))).collect();
    let members = statuses.iter().map(|(_, s)| &s.members).find(|m| !m.is_empty());
    // A router's status lists the storage nodes it reached as services.
    let services: Vec<&keel_wire::protocol::ServiceInfo> = statuses.iter().flat_map(|(_, s)| &s.services).collect();
    let answered = |id: u64| {
        statuses.iter().find(|(_, s)| s.node_id == id && id != 0).map(|(e, _)| *e).or_else(|| {
            services.iter().find(|s| s.role == "node" && s.node == id && s.healthy).map(|s| s.endpoint.as_str())
        })
    };
    let nodes: Vec<Json> = match members {
        Some(members) => members
            .iter()
            .map(|m| {
                json!({
                    "Id": m.id, "Name": m.name, "AvailabilityZone": m.az, "ReplicationAddress": m.address,
                    "Endpoint": answered(m.id), "Health": if answered(m.id).is_some() { "up" } else { "unreachable" },
                })
            })
            .collect(),
        None => statuses
            .iter()
            .map(|(e, _)| json!({"Id": 0, "Name": "standalone", "Endpoint": e, "Health": "up"}))
            .collect(),
    };
    let mut partitions: std::collections::BTreeMap<u64, Vec<(u64, &keel_wire::protocol::GroupInfo)>> =
        std::collections::BTreeMap::new();
    for (_, status) in &statuses {
        for group in &status.groups {
            let node = if group.node != 0 { group.node } else { status.node_id };
            partitions.entry(group.partition).or_default().push((node, group));
        }
    }
    let partitions: Vec<Json> = partitions
        .into_iter()
        .map(|(partition, seen)| {
            let term = seen.iter().map(|(_, g)| g.term).max().unwrap_or(0);
            let leader = seen
                .iter()
                .find(|(_, g)| g.role == keel_wire::protocol::ROLE_LEADER && g.term == term)
                .map(|(node, _)| *node)
                .or_else(|| seen.iter().filter(|(_, g)| g.term == term && g.leader != 0).map(|(_, g)| g.leader).next());
            let voters = keel_wire::protocol::newest_report(&seen).map(|g| g.voters.clone()).unwrap_or_default();
            let replicas: Vec<Json> = voters
                .iter()
                .map(|node| match seen.iter().find(|(n, _)| n == node) {
                    Some((_, g)) if g.log_replicas.contains(node) => json!({"Node": node, "Role": "log replica",
                        "Term": g.term, "Commit": g.commit, "LastIndex": g.last_index}),
                    Some((_, g)) => json!({"Node": node, "Role": role_name(g.role), "Term": g.term,
                        "Commit": g.commit, "Applied": g.applied, "LastIndex": g.last_index}),
                    None => json!({"Node": node, "Role": "unknown"}),
                })
                .collect();
            json!({"Partition": format!("{partition:#x}"), "Name": partition_name(partition),
                "Leader": leader, "Term": term, "Replicas": replicas})
        })
        .collect();
    let errors: Vec<Json> =
        answers.iter().filter_map(|(e, a)| a.as_ref().err().map(|why| json!({"Endpoint": e, "Error": why}))).collect();
    let front: Vec<Json> = services
        .iter()
        .filter(|s| s.role != "node")
        .map(|s| {
            json!({"Role": s.role, "Endpoint": s.endpoint, "Health": if s.healthy { "up" } else { "unreachable" },
                "Version": s.version, "Lookups": s.lookups, "Requests": s.requests,
                "Replacements": s.replacements})
        })
        .collect();
    json!({"Nodes": nodes, "Partitions": partitions, "Services": front, "Unreachable": errors})
}

fn status_text(merged: &Json) -> String {
    let text = |v: &Json| match v {
        Json::String(s) => s.clone(),
        Json::Null => "-".to_owned(),
        other => other.to_string(),
    };
    let mut out = String::from("NODE  NAME        AZ          HEALTH       ENDPOINT\n");
    for node in merged["Nodes"].as_array().into_iter().flatten() {
        out.push_str(&format!(
            "{:<5} {:<11} {:<11} {:<12} {}\n",
            text(&node["Id"]),
            text(&node["Name"]),
            text(&node["AvailabilityZone"]),
            text(&node["Health"]),
            text(&node["Endpoint"])
        ));
    }
    out.push_str("\nPARTITION            NAME             LEADER  TERM  REPLICAS (node role applied)\n");
    for p in merged["Partitions"].as_array().into_iter().flatten() {
        let replicas: Vec<String> = p["Replicas"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|r| format!("{} {} {}", text(&r["Node"]), text(&r["Role"]), text(&r["Applied"])))
            .collect();
        out.push_str(&format!(
            "{:<20} {:<16} {:<7} {:<5} {}\n",
            text(&p["Partition"]),
            text(&p["Name"]),
            text(&p["Leader"]),
            text(&p["Term"]),
            replicas.join(", ")
        ));
    }
    let services = merged["Services"].as_array().into_iter().flatten().collect::<Vec<_>>();
    if !services.is_empty() {
        out.push_str(
            "\nSERVICE  HEALTH       ENDPOINT              MAP VERSION  LOOKUPS     REQUESTS    REPLACEMENTS\n",
        );
        for s in services {
            out.push_str(&format!(
                "{:<8} {:<12} {:<21} {:<12} {:<11} {:<11} {}\n",
                text(&s["Role"]),
                text(&s["Health"]),
                text(&s["Endpoint"]),
                text(&s["Version"]),
                text(&s["Lookups"]),
                text(&s["Requests"]),
                text(&s["Replacements"])
            ));
        }
    }
    for e in merged["Unreachable"].as_array().into_iter().flatten() {
        out.push_str(&format!("\nunreachable: {} ({})\n", text(&e["Endpoint"]), text(&e["Error"])));
    }
    out
}
