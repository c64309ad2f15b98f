//! The engine benchmark's harness.
//!
//! - `bench-harness produce --topic T --partitions P --records N`: creates the input topic and
//!   fills it with N Avro envelopes (Confluent wire format, schema registered under `T-value`),
//!   unless it already holds exactly N records.
//! - `bench-harness measure --label L --output T --partitions P --records N --expect M -- CMD…`:
//!   creates the output topic, starts CMD as a child process and watches the output topic's
//!   high watermarks every 10 ms until M records are there. Throughput is taken between the
//!   first and the last output (so process start-up, JVM warm-up of class loading and the group
//!   join are excluded for every contender alike) and expressed in input records/s; the wall
//!   time from spawning is printed beside it. The child's peak RSS (VmHWM) is read from /proc
//!   before it is stopped with SIGTERM. One output record is then decoded through the registry
//!   to check the contender wrote a product. Prints one `MEASURE …` line.

use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use catalog_bench::{ENVELOPE_SCHEMA, envelope, key_of, peak_rss_kib, setting};
use clap::{Parser, Subcommand};
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::Message;
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use rdkafka::{ClientConfig, Offset, TopicPartitionList};
use topology::serdes::{HttpSchemaRegistry, SchemaRegistry};

#[derive(Parser)]
struct Args {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Creates and fills the input topic.
    Produce {
        #[arg(long)]
        topic: String,
        #[arg(long)]
        partitions: i32,
        #[arg(long)]
        records: u64,
    },
    /// Deletes the topics whose names start with `prefix` (old output topics).
    Cleanup {
        #[arg(long, default_value = "bench.out.")]
        prefix: String,
    },
    /// Runs one contender and measures it.
    Measure {
        #[arg(long)]
        label: String,
        #[arg(long)]
        output: String,
        #[arg(long)]
        partitions: i32,
        /// Input records.
        #[arg(long)]
        records: u64,
        /// Output records to wait for.
        #[arg(long)]
        expect: u64,
        #[arg(long, default_value_t = 240)]
        timeout_s: u64,
        /// Fields an output record must have (`id,sku,…` for products, `op,after` for copies).
        #[arg(long, default_value = "id,sku,price_cents,source_ts_ms")]
        fields: String,
        /// The contender's command line.
        #[arg(last = true, required = true)]
        command: Vec<String>,
    },
}

fn high_watermarks(c: &BaseConsumer, topic: &str, partitions: i32) -> anyhow::Result<i64> {
    let mut sum = 0;
    for p in 0..partitions {
        let (_, high) = c
            .fetch_watermarks(topic, p, Duration::from_secs(5))
            .with_context(|| format!("watermarks of {topic}-{p}"))?;
        sum += high;
    }
    Ok(sum)
}

async fn create_topic(bootstrap: &str, topic: &str, partitions: i32) -> anyhow::Result<bool> {
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .create()
        .context("admin client")?;
    let res = admin
        .create_topics(
            &[NewTopic::new(topic, partitions, TopicReplication::Fixed(1))],
            &AdminOptions::new().operation_timeout(Some(Duration::from_secs(10))),
        )
        .await
        .context("create topic")?;
    for r in res {
        match r {
            Ok(_) => {}
            Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => return Ok(false),
            Err((t, e)) => bail!("creating {t}: {e}"),
        }
    }
    Ok(true)
}

fn watcher(bootstrap: &str) -> anyhow::Result<BaseConsumer> {
    ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .create()
        .context("watcher")
}

async fn produce(
    bootstrap: &str,
    registry: &str,
    topic: &str,
    partitions: i32,
    n: u64,
) -> anyhow::Result<()> {
    let created = create_topic(bootstrap, topic, partitions).await?;
    let w = watcher(bootstrap)?;
    if !created {
        let have = high_watermarks(&w, topic, partitions)?;
        if have == n as i64 {
            eprintln!("bench-harness: {topic} already holds {n} records");
            return Ok(());
        }
        if have != 0 {
            bail!("{topic} exists with {have} records, not {n}: delete it or pick another name");
        }
    }
    let schema = apache_avro::Schema::parse_str(ENVELOPE_SCHEMA).context("envelope schema")?;
    let sr = HttpSchemaRegistry::new(registry);
    let id = sr
        .register(&format!("{topic}-value"), &schema)
        .await
        .context("register the envelope schema")?;
    let producer: BaseProducer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("linger.ms", "20")
        .set("enable.idempotence", "true")
        .create()
        .context("producer")?;
    let writer = apache_avro::writer::datum::GenericDatumWriter::builder(&schema)
        .build()
        .context("writer")?;
    let started = Instant::now();
    let mut bytes_total = 0usize;
    for i in 0..n {
        let datum = writer.write_value_to_vec(envelope(i)).context("encode")?;
        let mut value = Vec::with_capacity(datum.len() + 5);
        value.push(0u8);
        value.extend_from_slice(&id.to_be_bytes());
        value.extend_from_slice(&datum);
        bytes_total += value.len();
        let key = key_of(i);
        let mut rec = BaseRecord::to(topic).key(key.as_bytes()).payload(&value);
        loop {
            match producer.send(rec) {
                Ok(()) => break,
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), r)) => {
                    rec = r;
                    producer.poll(Duration::from_millis(5));
                }
                Err((e, _)) => bail!("produce: {e}"),
            }
        }
        producer.poll(Duration::ZERO);
    }
    producer.flush(Duration::from_secs(60)).context("flush")?;
    let have = high_watermarks(&w, topic, partitions)?;
    if have != n as i64 {
        bail!("{topic} holds {have} records after producing {n}");
    }
    eprintln!(
        "bench-harness: produced {n} records ({} B average) to {topic} ({partitions} partitions) in {:.1} s",
        bytes_total / n.max(1) as usize,
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

async fn delete_topics(bootstrap: &str, topics: &[&str]) -> anyhow::Result<()> {
    if topics.is_empty() {
        return Ok(());
    }
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .create()
        .context("admin client")?;
    for r in admin
        .delete_topics(topics, &AdminOptions::new())
        .await
        .context("delete topics")?
    {
        if let Err((t, e)) = r {
            eprintln!("bench-harness: deleting {t}: {e}");
        }
    }
    Ok(())
}

async fn cleanup(bootstrap: &str, prefix: &str) -> anyhow::Result<()> {
    let w = watcher(bootstrap)?;
    let md = w
        .fetch_metadata(None, Duration::from_secs(10))
        .context("metadata")?;
    let names: Vec<&str> = md
        .topics()
        .iter()
        .map(|t| t.name())
        .filter(|n| n.starts_with(prefix))
        .collect();
    eprintln!(
        "bench-harness: deleting {} topics starting with {prefix}",
        names.len()
    );
    delete_topics(bootstrap, &names).await
}

/// Decodes the first record of partition 0 of `topic` as a product.
async fn verify(
    bootstrap: &str,
    registry: &str,
    topic: &str,
    want_fields: &str,
) -> anyhow::Result<String> {
    let c: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("group.id", "bench-verify")
        .set("enable.auto.commit", "false")
        .create()
        .context("verifier")?;
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition_offset(topic, 0, Offset::Beginning)?;
    c.assign(&tpl)?;
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        let Some(m) = c.poll(Duration::from_millis(200)) else {
            continue;
        };
        let m = m.context("verify poll")?;
        let v = m.payload().context("output without a value")?;
        if v.len() < 5 || v[0] != 0 {
            bail!("output is not in the Confluent wire format");
        }
        let id = u32::from_be_bytes([v[1], v[2], v[3], v[4]]);
        let schema = HttpSchemaRegistry::new(registry)
            .schema_by_id(id)
            .await
            .context("output schema id")?;
        let value = apache_avro::reader::datum::GenericDatumReader::builder(&schema)
            .build()
            .and_then(|r| r.read_value(&mut &v[5..]))
            .context("output does not decode with its schema")?;
        let apache_avro::types::Value::Record(fields) = value else {
            bail!("output is not a record");
        };
        let names: Vec<&str> = fields.iter().map(|(n, _)| n.as_str()).collect();
        for want in want_fields.split(',') {
            if !names.contains(&want) {
                bail!("output lacks field {want}: {names:?}");
            }
        }
        return Ok(format!(
            "schema_id={id} key={}",
            String::from_utf8_lossy(m.key().unwrap_or_default())
        ));
    }
    bail!("no output record to verify")
}

#[allow(clippy::too_many_arguments)]
async fn measure(
    bootstrap: &str,
    registry: &str,
    label: &str,
    output: &str,
    partitions: i32,
    records: u64,
    expect: u64,
    timeout: Duration,
    fields: &str,
    command: &[String],
) -> anyhow::Result<()> {
    if !create_topic(bootstrap, output, partitions).await? {
        bail!("output topic {output} already exists: use a fresh name per run");
    }
    let w = watcher(bootstrap)?;
    let spawned = Instant::now();
    let mut child = Command::new(&command[0])
        .args(&command[1..])
        .spawn()
        .with_context(|| format!("starting {command:?}"))?;
    let pid = child.id().to_string();
    let mut first: Option<(Instant, i64)> = None;
    let mut peak_rss = 0;
    let outcome = loop {
        if let Some(status) = child.try_wait()? {
            break Err(anyhow::anyhow!("{label} exited early with {status}"));
        }
        if spawned.elapsed() > timeout {
            break Err(anyhow::anyhow!("{label} timed out"));
        }
        peak_rss = peak_rss.max(peak_rss_kib(&pid).unwrap_or(0));
        let have = high_watermarks(&w, output, partitions)?;
        let now = Instant::now();
        if have > 0 && first.is_none() {
            first = Some((now, have));
        }
        if have >= expect as i64 {
            break Ok((now, have));
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    peak_rss = peak_rss.max(peak_rss_kib(&pid).unwrap_or(0));
    let _ = Command::new("kill").args(["-TERM", &pid]).status();
    let stop_deadline = Instant::now() + Duration::from_secs(15);
    while child.try_wait()?.is_none() {
        if Instant::now() > stop_deadline {
            let _ = child.kill();
            let _ = child.wait();
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let (last, have) = outcome?;
    let (t0, c0) = first.context("no output seen")?;
    let window = (last - t0).as_secs_f64().max(1e-3);
    // Input records/s over the window between first and last output.
    let rate = records as f64 * ((have - c0) as f64 / expect as f64) / window;
    let checked = match verify(bootstrap, registry, output, fields).await {
        Ok(c) => c,
        Err(e) => format!("verify=FAILED({e})"),
    };
    // The outputs are not needed after the check; keep the broker's disk small.
    delete_topics(bootstrap, &[output]).await?;
    println!(
        "MEASURE label={label} partitions={partitions} records={records} outputs={have} rate={rate:.0} window_s={window:.3} wall_s={:.3} rss_kib={peak_rss} {checked}",
        (last - spawned).as_secs_f64()
    );
    Ok(())
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    let bootstrap = setting("KAFKA_BOOTSTRAP", "127.0.0.1:9092");
    let registry = setting("SCHEMA_REGISTRY_URL", "http://127.0.0.1:8081");
    match Args::parse().cmd {
        Cmd::Produce {
            topic,
            partitions,
            records,
        } => produce(&bootstrap, &registry, &topic, partitions, records).await,
        Cmd::Cleanup { prefix } => cleanup(&bootstrap, &prefix).await,
        Cmd::Measure {
            label,
            output,
            partitions,
            records,
            expect,
            timeout_s,
            fields,
            command,
        } => {
            measure(
                &bootstrap,
                &registry,
                &label,
                &output,
                partitions,
                records,
                expect,
                Duration::from_secs(timeout_s),
                &fields,
                &command,
            )
            .await
        }
    }
}
