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
//! - `bench-harness produce-keyed --topic T --partitions P --records N --keys K --span-ms S`: the
//!   stateful benchmark's input: creates the topic and fills it with N records of String key
//!   `k<j>` (j pseudo-random in 0..K, the same for the same record index on every run) and a
//!   20-byte String value, unless it already holds exactly N records (the topic is created with
//!   `retention.ms=-1`, so the broker keeps them whatever their timestamps). Timestamps are
//!   spread evenly over the S ms that end now; 3 % of the records are out of order, up to 5 s
//!   earlier than their place, but never earlier than the start of their epoch-aligned
//!   `--disorder-within-ms` slot (default 60,000: a 1-minute tumbling window without grace drops
//!   none of them; 0: no limit).
//! - `bench-harness measure … --until-count-sum N [--scenario S] -- CMD…` (instead of `--expect`):
//!   the stateful completion mode; `--scenario S` adds `scenario=S` to the MEASURE line. Instead
//!   of watching high watermarks, it reads the output topic from the beginning, keeps the last
//!   value per key (an 8-byte big-endian i64, as Kafka's LongSerializer writes it; a tombstone
//!   removes the key) and completes when those values sum to N. A count of each key, or of each
//!   key and window, sums to the number of input records counted, so N is the input's record
//!   count. Throughput is input records/s from spawning the contender to completion (start-up
//!   included, as completion cannot be told apart from a last batch otherwise).

use std::collections::HashMap;
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use catalog_bench::{ENVELOPE_SCHEMA, envelope, key_of, peak_rss_kib, setting};
use clap::{ArgGroup, Parser, Subcommand};
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
    /// Creates and fills the stateful benchmark's input topic (String keys and values).
    ProduceKeyed {
        #[arg(long)]
        topic: String,
        #[arg(long)]
        partitions: i32,
        #[arg(long)]
        records: u64,
        /// Distinct keys.
        #[arg(long)]
        keys: u64,
        /// The records' timestamps cover this many milliseconds, ending now.
        #[arg(long)]
        span_ms: u64,
        /// Out-of-order records stay within their epoch-aligned slot of this many ms (0: no limit).
        #[arg(long, default_value_t = 60_000)]
        disorder_within_ms: u64,
    },
    /// Deletes the topics whose names start with `prefix` (old output topics).
    Cleanup {
        #[arg(long, default_value = "bench.out.")]
        prefix: String,
    },
    /// Runs one contender and measures it.
    #[command(group(ArgGroup::new("completion").required(true).args(["expect", "until_count_sum"])))]
    Measure {
        #[arg(long)]
        label: String,
        /// Printed as `scenario=…` in the MEASURE line.
        #[arg(long)]
        scenario: Option<String>,
        #[arg(long)]
        output: String,
        #[arg(long)]
        partitions: i32,
        /// Input records.
        #[arg(long)]
        records: u64,
        /// Output records to wait for.
        #[arg(long)]
        expect: Option<u64>,
        /// Complete when the last 8-byte big-endian i64 values per output key sum to this.
        #[arg(long)]
        until_count_sum: Option<u64>,
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

/// Records held now (high minus low watermark, summed over the partitions): unlike the high
/// watermarks, this drops when the broker's retention has deleted records.
fn records_held(c: &BaseConsumer, topic: &str, partitions: i32) -> anyhow::Result<i64> {
    let mut sum = 0;
    for p in 0..partitions {
        let (low, high) = c
            .fetch_watermarks(topic, p, Duration::from_secs(5))
            .with_context(|| format!("watermarks of {topic}-{p}"))?;
        sum += high - low;
    }
    Ok(sum)
}

async fn create_topic(bootstrap: &str, topic: &str, partitions: i32) -> anyhow::Result<bool> {
    create_topic_with(bootstrap, topic, partitions, &[]).await
}

/// Creates `topic` with the given topic configs; false when it already exists.
async fn create_topic_with(
    bootstrap: &str,
    topic: &str,
    partitions: i32,
    configs: &[(&str, &str)],
) -> anyhow::Result<bool> {
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .create()
        .context("admin client")?;
    let mut new_topic = NewTopic::new(topic, partitions, TopicReplication::Fixed(1));
    for (k, v) in configs {
        new_topic = new_topic.set(k, v);
    }
    let res = admin
        .create_topics(
            &[new_topic],
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

/// The schema id in the first record of `topic`'s partition 0 (Confluent wire format).
fn first_schema_id(bootstrap: &str, topic: &str) -> anyhow::Result<Option<u32>> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("group.id", "bench-harness-probe")
        .set("enable.auto.commit", "false")
        .create()
        .context("probe consumer")?;
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition_offset(topic, 0, Offset::Beginning)
        .context("probe partition")?;
    consumer.assign(&tpl).context("assign probe")?;
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        if let Some(got) = consumer.poll(Duration::from_millis(200)) {
            let message = got.context("probe read")?;
            return Ok(message
                .payload()
                .and_then(|v| v.get(1..5))
                .and_then(|b| <[u8; 4]>::try_from(b).ok())
                .map(u32::from_be_bytes));
        }
    }
    Ok(None)
}

async fn delete_topic(bootstrap: &str, topic: &str) -> anyhow::Result<()> {
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .create()
        .context("admin client")?;
    for r in admin
        .delete_topics(
            &[topic],
            &AdminOptions::new().operation_timeout(Some(Duration::from_secs(10))),
        )
        .await
        .context("delete topic")?
    {
        if let Err((t, e)) = r {
            bail!("deleting {t}: {e}");
        }
    }
    Ok(())
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
    let schema = apache_avro::Schema::parse_str(ENVELOPE_SCHEMA).context("envelope schema")?;
    let sr = HttpSchemaRegistry::new(registry);
    let id = sr
        .register(&format!("{topic}-value"), &schema)
        .await
        .context("register the envelope schema")?;
    let mut created = create_topic(bootstrap, topic, partitions).await?;
    let w = watcher(bootstrap)?;
    if !created && high_watermarks(&w, topic, partitions)? == n as i64 {
        // A registry started afresh since the topic was filled hands out other ids: the old
        // records would name a schema it does not have (or another one).
        let first = first_schema_id(bootstrap, topic)?;
        if first == Some(id) {
            eprintln!("bench-harness: {topic} already holds {n} records");
            return Ok(());
        }
        eprintln!(
            "bench-harness: {topic} holds records of schema id {first:?}, the registry now has {id}: filling it again"
        );
        delete_topic(bootstrap, topic).await?;
        for _ in 0..50 {
            created = create_topic(bootstrap, topic, partitions).await?;
            if created {
                break;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        if !created {
            bail!("{topic} could not be created again after deleting it");
        }
    }
    if !created {
        let have = high_watermarks(&w, topic, partitions)?;
        if have != 0 {
            bail!("{topic} exists with {have} records, not {n}: delete it or pick another name");
        }
    }
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

/// SplitMix64's finaliser: a well-mixed 64-bit value for each input, the same on every run.
fn mix(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    x ^ (x >> 31)
}

/// Percent of `produce-keyed` records that are out of order, and how far back they go at most.
const DISORDER_PERCENT: u64 = 3;
const DISORDER_MAX_MS: u64 = 5_000;

/// Key, value and timestamp of `produce-keyed` record `i` of `n`, and whether it is out of
/// order. `start_ms` is the first record's timestamp.
fn keyed_record(
    i: u64,
    n: u64,
    keys: u64,
    start_ms: u64,
    span_ms: u64,
    disorder_within_ms: u64,
) -> (String, String, u64, bool) {
    let key = format!("k{}", mix(i) % keys.max(1));
    let value = format!("v{i:019}");
    let place = start_ms + i * span_ms / n.max(1);
    let d = mix(i ^ 0xD1B5_4A32_D192_ED03);
    if d % 100 >= DISORDER_PERCENT {
        return (key, value, place, false);
    }
    let mut ts = place.saturating_sub(1 + (d >> 8) % DISORDER_MAX_MS);
    if disorder_within_ms > 0 {
        ts = ts.max(place - place % disorder_within_ms);
    }
    (key, value, ts, ts < place)
}

#[allow(clippy::too_many_arguments)]
async fn produce_keyed(
    bootstrap: &str,
    topic: &str,
    partitions: i32,
    n: u64,
    keys: u64,
    span_ms: u64,
    disorder_within_ms: u64,
) -> anyhow::Result<()> {
    if n == 0 || keys == 0 {
        bail!("--records and --keys must be positive");
    }
    // The records carry their own timestamps: without retention.ms=-1 the broker would delete
    // them once the newest is older than its retention (24 h here), even from a reused topic.
    let created =
        create_topic_with(bootstrap, topic, partitions, &[("retention.ms", "-1")]).await?;
    let w = watcher(bootstrap)?;
    if !created {
        let have = records_held(&w, topic, partitions)?;
        if have == n as i64 {
            eprintln!("bench-harness: {topic} already holds {n} records");
            return Ok(());
        }
        if high_watermarks(&w, topic, partitions)? != 0 {
            bail!("{topic} exists with {have} records, not {n}: delete it or pick another name");
        }
    }
    let producer: BaseProducer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("linger.ms", "20")
        .set("enable.idempotence", "true")
        .create()
        .context("producer")?;
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .context("clock")?
        .as_millis() as u64;
    let start_ms = now_ms - span_ms;
    let started = Instant::now();
    let mut disordered = 0u64;
    for i in 0..n {
        let (key, value, ts, late) =
            keyed_record(i, n, keys, start_ms, span_ms, disorder_within_ms);
        disordered += u64::from(late);
        let mut rec = BaseRecord::to(topic)
            .key(key.as_bytes())
            .payload(value.as_bytes())
            .timestamp(ts as i64);
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
    let have = records_held(&w, topic, partitions)?;
    if have != n as i64 {
        bail!("{topic} holds {have} records after producing {n}");
    }
    eprintln!(
        "bench-harness: produced {n} keyed records ({keys} keys, {span_ms} ms, {disordered} out of order) to {topic} ({partitions} partitions) in {:.1} s",
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

/// When a measured run is complete.
#[derive(Clone, Copy)]
enum Completion {
    /// The output topic holds this many records (`--expect`).
    Records(u64),
    /// The last value per output key, an 8-byte big-endian i64, sums to this
    /// (`--until-count-sum`).
    CountSum(u64),
}

impl Completion {
    fn target(self) -> u64 {
        match self {
            Completion::Records(n) | Completion::CountSum(n) => n,
        }
    }
}

/// Reads an output topic from the beginning and keeps the last i64 value per key and their sum.
struct LastValues {
    consumer: BaseConsumer,
    last: HashMap<Vec<u8>, i64>,
    sum: i64,
    outputs: u64,
}

impl LastValues {
    fn new(bootstrap: &str, topic: &str, partitions: i32) -> anyhow::Result<Self> {
        let consumer: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", bootstrap)
            .set("group.id", "bench-measure")
            .set("enable.auto.commit", "false")
            .create()
            .context("output reader")?;
        let mut tpl = TopicPartitionList::new();
        for p in 0..partitions {
            tpl.add_partition_offset(topic, p, Offset::Beginning)?;
        }
        consumer.assign(&tpl)?;
        Ok(Self {
            consumer,
            last: HashMap::new(),
            sum: 0,
            outputs: 0,
        })
    }

    /// Takes in what the reader has fetched so far (at most 50,000 records a call).
    fn drain(&mut self) -> anyhow::Result<()> {
        for _ in 0..50_000 {
            let Some(m) = self.consumer.poll(Duration::ZERO) else {
                break;
            };
            let m = m.context("reading the output")?;
            let key = m.key().unwrap_or_default().to_vec();
            let value = match m.payload() {
                None => 0,
                Some(v) => i64::from_be_bytes(v.try_into().map_err(|_| {
                    anyhow::anyhow!(
                        "output value of {} bytes is not an 8-byte big-endian i64",
                        v.len()
                    )
                })?),
            };
            let old = if m.payload().is_none() {
                self.last.remove(&key)
            } else {
                self.last.insert(key, value)
            };
            self.sum = self.sum.wrapping_add(value.wrapping_sub(old.unwrap_or(0)));
            self.outputs += 1;
        }
        Ok(())
    }
}

#[allow(clippy::too_many_arguments)]
async fn measure(
    bootstrap: &str,
    registry: &str,
    label: &str,
    scenario: Option<&str>,
    output: &str,
    partitions: i32,
    records: u64,
    completion: Completion,
    timeout: Duration,
    fields: &str,
    command: &[String],
) -> anyhow::Result<()> {
    if !create_topic(bootstrap, output, partitions).await? {
        bail!("output topic {output} already exists: use a fresh name per run");
    }
    let w = watcher(bootstrap)?;
    let mut last_values = match completion {
        Completion::Records(_) => None,
        Completion::CountSum(_) => Some(LastValues::new(bootstrap, output, partitions)?),
    };
    let spawned = Instant::now();
    let mut child = Command::new(&command[0])
        .args(&command[1..])
        .spawn()
        .with_context(|| format!("starting {command:?}"))?;
    let pid = child.id().to_string();
    let mut first: Option<(Instant, i64)> = None;
    let mut peak_rss = 0;
    let outcome = loop {
        let progress = match &last_values {
            Some(l) => format!(" (count sum {} of {records})", l.sum),
            None => String::new(),
        };
        if let Some(status) = child.try_wait()? {
            break Err(anyhow::anyhow!(
                "{label} exited early with {status}{progress}"
            ));
        }
        if spawned.elapsed() > timeout {
            break Err(anyhow::anyhow!("{label} timed out{progress}"));
        }
        peak_rss = peak_rss.max(peak_rss_kib(&pid).unwrap_or(0));
        let (have, done) = match last_values.as_mut() {
            Some(l) => {
                l.drain()?;
                (l.outputs as i64, l.sum == completion.target() as i64)
            }
            None => match high_watermarks(&w, output, partitions) {
                Ok(have) => (have, have >= completion.target() as i64),
                // A topic just created may be unknown to the broker's metadata for a moment;
                // leaving here would also leave the contender running.
                Err(_) if spawned.elapsed() < Duration::from_secs(30) => {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
                Err(e) => break Err(e),
            },
        };
        let now = Instant::now();
        if have > 0 && first.is_none() {
            first = Some((now, have));
        }
        if done {
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
    let wall = (last - spawned).as_secs_f64();
    let scenario = scenario
        .map(|s| format!(" scenario={s}"))
        .unwrap_or_default();
    let line = match completion {
        Completion::Records(expect) => {
            // Input records/s over the window between first and last output.
            let rate = records as f64 * ((have - c0) as f64 / expect as f64) / window;
            let checked = match verify(bootstrap, registry, output, fields).await {
                Ok(c) => c,
                Err(e) => format!("verify=FAILED({e})"),
            };
            format!(
                "MEASURE label={label}{scenario} partitions={partitions} records={records} outputs={have} rate={rate:.0} window_s={window:.3} wall_s={wall:.3} rss_kib={peak_rss} {checked}"
            )
        }
        Completion::CountSum(target) => {
            // Input records/s from the contender's start to the moment the counts add up.
            let rate = records as f64 / wall.max(1e-3);
            let keys = last_values.as_ref().map_or(0, |l| l.last.len());
            format!(
                "MEASURE label={label}{scenario} partitions={partitions} records={records} outputs={have} keys={keys} rate={rate:.0} window_s={window:.3} wall_s={wall:.3} rss_kib={peak_rss} verify=count_sum({target})"
            )
        }
    };
    // The outputs are not needed after the check; keep the broker's disk small.
    delete_topics(bootstrap, &[output]).await?;
    println!("{line}");
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
        Cmd::ProduceKeyed {
            topic,
            partitions,
            records,
            keys,
            span_ms,
            disorder_within_ms,
        } => {
            produce_keyed(
                &bootstrap,
                &topic,
                partitions,
                records,
                keys,
                span_ms,
                disorder_within_ms,
            )
            .await
        }
        Cmd::Cleanup { prefix } => cleanup(&bootstrap, &prefix).await,
        Cmd::Measure {
            label,
            scenario,
            output,
            partitions,
            records,
            expect,
            until_count_sum,
            timeout_s,
            fields,
            command,
        } => {
            let completion = match (expect, until_count_sum) {
                (Some(n), _) => Completion::Records(n),
                (None, Some(n)) => Completion::CountSum(n),
                (None, None) => bail!("--expect or --until-count-sum is required"),
            };
            measure(
                &bootstrap,
                &registry,
                &label,
                scenario.as_deref(),
                &output,
                partitions,
                records,
                completion,
                Duration::from_secs(timeout_s),
                &fields,
                &command,
            )
            .await
        }
    }
}
