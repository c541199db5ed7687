//! `keel`: the command-line client. Speaks DynamoDB JSON and prints the AWS
//! CLI's JSON shapes (`{"Item": …}`, `{"Items": […], "Count": n, …}`).
//! Exit status: 0 success, 254 the service answered with an error, 255 the
//! service could not be reached, 2 usage errors.

use std::process::ExitCode;

use clap::{Parser, Subcommand};
use keel_wire::client::{BlockingClient, Client, ClientConfig, ClientError};
use keel_wire::item::{self, Item};
use keel_wire::protocol::{ExpressionArgs, KeyKind, Request, ReturnValues, TableInfo};
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
