//! A table straight from Debezium change events (MongoDB connector envelopes: the `after`
//! image as JSON text, `d` for deletes), joined to a stream of orders: each order is
//! enriched with the product's current name, or marked unknown (a left join) when the
//! product does not exist (any more). Runs on the embedded transport, no broker:
//!
//! `cargo run -p topology --example cdc_table_join`

mod common;

use std::sync::Arc;

use common::{Result, read, run_until_done, send, text};
use topology::serdes::{JsonSerde, StringSerde};
use topology::stateful::JoinKind;
use topology::transport::EmbeddedLog;
use topology::{TopologyBuilder, Value};

fn change(op: &str, id: &str, name: &str) -> String {
    let after = (op != "d").then(|| serde_json::json!({"_id": id, "name": name}).to_string());
    serde_json::json!({"op": op, "before": null, "after": after, "source": {"connector": "mongodb"}})
        .to_string()
}

#[tokio::main]
async fn main() -> Result<()> {
    let b = TopologyBuilder::new();
    let products = b.cdc_table(
        "products",
        "mongo.shop.products",
        Arc::new(StringSerde),
        Arc::new(JsonSerde),
    );
    b.source(
        "orders",
        "orders",
        Arc::new(StringSerde),
        Arc::new(JsonSerde),
    )
    .join_table("enrich", &products, JoinKind::Left, |order, product| {
        let mut order = order.map(Value::to_json).unwrap_or_default();
        order["product_name"] = product.and_then(|p| p.field_str("name")).map_or(
            serde_json::Value::from("(unknown)"),
            serde_json::Value::from,
        );
        Value::Json(order)
    })
    .to(
        "enriched",
        "enriched-orders",
        Arc::new(StringSerde),
        Arc::new(JsonSerde),
    );
    let topology = b.build().map_err(|e| format!("{e:?}"))?;
    println!("{}", topology.describe());

    let log = Arc::new(EmbeddedLog::temporary()?);
    // A join's two inputs must be co-partitioned: same partition count, same key partitioner.
    log.create_topic("mongo.shop.products", 2)?;
    log.create_topic("orders", 2)?;
    send(
        &log,
        "mongo.shop.products",
        "p-1",
        Some(&change("r", "p-1", "mug")),
        1_000,
    )?;
    send(
        &log,
        "mongo.shop.products",
        "p-2",
        Some(&change("c", "p-2", "teapot")),
        2_000,
    )?;
    send(
        &log,
        "mongo.shop.products",
        "p-1",
        Some(&change("u", "p-1", "big mug")),
        3_000,
    )?;
    send(
        &log,
        "mongo.shop.products",
        "p-2",
        Some(&change("d", "p-2", "")),
        4_000,
    )?;
    // The table's rows are in place before the orders arrive (the order of two topics is
    // otherwise up to the consumer).
    run_until_done(topology.clone(), log.clone(), "cdc-table-join").await?;
    send(
        &log,
        "orders",
        "p-1",
        Some(r#"{"order": 1, "quantity": 2}"#),
        5_000,
    )?;
    send(
        &log,
        "orders",
        "p-2",
        Some(r#"{"order": 2, "quantity": 1}"#),
        6_000,
    )?;
    run_until_done(topology, log.clone(), "cdc-table-join").await?;

    println!("enriched orders:");
    for r in read(&log, "enriched-orders")? {
        println!("  {} -> {}", text(&r.key), text(&r.value));
    }
    Ok(())
}
