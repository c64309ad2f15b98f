//! The product system end to end through the distributed services while the image pipeline
//! scales (SPEC §5, §7): products are created, updated twice with *different* image bytes, and
//! a quarter of them deleted, while image-pipeline instances are added (1 → 3) and removed
//! (one SIGKILLed, one SIGTERMed, back to 1). The per-product state of the collector and the
//! remover is a task store that must follow its partitions between instances (restored from
//! its changelog), or a moved product would upload again, leak its replaced object or keep a
//! deleted product's image.
//!
//! Everything is counted outside the processes: the view through the complete-products API,
//! the objects by listing the bucket, and the uploads by the S3 server itself — the bucket is
//! versioned before the services start, so every PUT of a key leaves one version of it: a key
//! with two versions was uploaded twice.
//!
//! Unique topics (6 partitions), database, bucket and application id per run; children's logs
//! are printed when the test fails (or always, with `CATALOG_E2E_LOGS=1`).

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use axum::http::{StatusCode, Uri, header};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use support::{
    ServiceClient, Services, common_settings, create_topics, free_port, get_object, list_objects,
    metric_sum, run_topics, s3_client, unique_name, write_settings, write_topology,
};

const PIXEL: &[u8] = include_bytes!("../../images/tests/fixtures/pixel.png");
/// Products created.
const PRODUCTS: usize = 60;
/// Partitions of every topic (and so tasks of the collector/remover sub-topology).
const PARTITIONS: i32 = 6;
/// How long any one step may take to converge (rebalances wait for a killed member's 6 s
/// session timeout; the machine is shared).
const DEADLINE: Duration = Duration::from_secs(240);
const MALL: &str = "mall-scale";
const PIPELINES: [&str; 3] = ["image-pipeline-1", "image-pipeline-2", "image-pipeline-3"];

fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

fn crc32(bytes: &[u8]) -> u32 {
    let mut crc = 0xFFFF_FFFFu32;
    for byte in bytes {
        crc ^= u32::from(*byte);
        for _ in 0..8 {
            crc = if crc & 1 == 1 {
                (crc >> 1) ^ 0xEDB8_8320
            } else {
                crc >> 1
            };
        }
    }
    !crc
}

/// A valid PNG of its own for every `path`: the 1×1 fixture with a `tEXt` chunk naming the
/// path before `IEND`, so every (product, version) has distinct bytes and sha256.
fn png_for(path: &str) -> Vec<u8> {
    let (head, iend) = PIXEL.split_at(PIXEL.len() - 12);
    assert_eq!(&iend[4..8], b"IEND", "the fixture ends with IEND");
    let mut chunk = b"tEXt".to_vec();
    chunk.extend_from_slice(b"Comment\0");
    chunk.extend_from_slice(path.as_bytes());
    let mut png = head.to_vec();
    png.extend_from_slice(&u32::try_from(chunk.len() - 4).expect("len").to_be_bytes());
    png.extend_from_slice(&chunk);
    png.extend_from_slice(&crc32(&chunk).to_be_bytes());
    png.extend_from_slice(iend);
    png
}

fn image_path(product: &str, version: u32) -> String {
    format!("/img/{product}/v{version}.png")
}

fn product_id(index: usize) -> String {
    format!("p{index:04}")
}

/// How long the image host takes to answer `path`: at once for v1, and for later versions
/// 0 to 2.75 s depending on the product, so that updates are still being collected when an
/// instance is killed or stopped.
fn latency(path: &str) -> Duration {
    let mut parts = path.trim_start_matches("/img/p").split('/');
    let index: u64 = parts.next().and_then(|n| n.parse().ok()).unwrap_or(0);
    match parts.next() {
        Some("v1.png") | None => Duration::ZERO,
        Some(_) => Duration::from_millis((index % 12) * 250),
    }
}

/// An image host answering every path with [`png_for`] that path, after its [`latency`].
async fn distinct_png_server() -> std::net::SocketAddr {
    let app = axum::Router::new().fallback(|uri: Uri| async move {
        tokio::time::sleep(latency(uri.path())).await;
        (
            StatusCode::OK,
            [(header::CONTENT_TYPE, "image/png")],
            png_for(uri.path()),
        )
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let address = listener.local_addr().expect("address");
    tokio::spawn(async move { axum::serve(listener, app).await });
    address
}

/// `DELETE` of a product at the complete-products API.
async fn delete_product(run: &ServiceClient, id: &str) {
    let response = run
        .http
        .delete(run.url(
            "complete-products",
            &format!("/api/v1/complete-products/{id}?mallId={MALL}"),
        ))
        .send()
        .await
        .expect("DELETE");
    assert_eq!(response.status().as_u16(), 200, "DELETE {id}");
}

/// One product as the view lists it.
#[derive(Debug, Clone, PartialEq)]
struct Listed {
    image_url: String,
    sha256: String,
    key: String,
}

/// Every product of the view (all pages), by product id.
async fn view(run: &ServiceClient, bucket: &str) -> Result<BTreeMap<String, Listed>, String> {
    let prefix = format!("s3://{bucket}/");
    let mut out = BTreeMap::new();
    let mut cursor: Option<String> = None;
    loop {
        let path = match &cursor {
            Some(cursor) => format!("/api/v1/complete-products?limit=500&cursor={cursor}"),
            None => "/api/v1/complete-products?limit=500".to_owned(),
        };
        let (status, page) = run.get("complete-products", &path).await;
        if status != 200 {
            return Err(format!("list: {status} {page}"));
        }
        for item in page["data"].as_array().cloned().unwrap_or_default() {
            let text = |v: &Value| v.as_str().unwrap_or_default().to_owned();
            let uri = text(&item["image"]["uri"]);
            out.insert(
                text(&item["productId"]),
                Listed {
                    image_url: text(&item["imageUrl"]),
                    sha256: text(&item["image"]["sha256"]),
                    key: uri.strip_prefix(&prefix).unwrap_or(&uri).to_owned(),
                },
            );
        }
        match page["nextCursor"].as_str() {
            Some(next) => cursor = Some(next.to_owned()),
            None => return Ok(out),
        }
    }
}

/// How many products the view shows with the image of `version`.
async fn at_version(run: &ServiceClient, bucket: &str, images: &str, version: u32) -> usize {
    view(run, bucket).await.map_or(0, |listed| {
        listed
            .iter()
            .filter(|(id, item)| {
                item.image_url == format!("http://{images}{}", image_path(id, version))
                    && item.sha256 == sha256_hex(&png_for(&image_path(id, version)))
            })
            .count()
    })
}

/// Every version of every object in `bucket`: (key, is a delete marker).
async fn object_versions(s3: &aws_sdk_s3::Client, bucket: &str) -> Vec<(String, bool)> {
    let mut out = Vec::new();
    let (mut key_marker, mut version_marker): (Option<String>, Option<String>) = (None, None);
    loop {
        let page = s3
            .list_object_versions()
            .bucket(bucket)
            .set_key_marker(key_marker.take())
            .set_version_id_marker(version_marker.take())
            .send()
            .await
            .expect("list object versions");
        for version in page.versions() {
            out.push((version.key().unwrap_or_default().to_owned(), false));
        }
        for marker in page.delete_markers() {
            out.push((marker.key().unwrap_or_default().to_owned(), true));
        }
        if page.is_truncated() == Some(true) {
            key_marker = page.next_key_marker().map(str::to_owned);
            version_marker = page.next_version_id_marker().map(str::to_owned);
        } else {
            return out;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn image_pipeline_scales_while_products_change_without_orphans_or_duplicate_uploads() {
    let dir = tempfile::tempdir().expect("tempdir");
    let run_id = unique_name("scale").replace('-', "_");
    let bucket = run_id.replace('_', "-");
    let database = run_id.clone();
    let topics = run_topics(&run_id, &database);
    let mut topic_names: Vec<String> = topics
        .as_object()
        .expect("topics")
        .values()
        .map(|topic| topic.as_str().expect("name").to_owned())
        .collect();
    let dead_letters: Vec<String> = topic_names.iter().map(|t| format!("{t}.dlq")).collect();
    topic_names.extend(dead_letters);
    create_topics(&topic_names, PARTITIONS).await;

    // The bucket, versioned, before any service writes to it: each PUT of a key leaves a
    // version, which is how the uploads are counted (the services find the bucket there).
    let s3 = s3_client("e2e-scale");
    s3.create_bucket()
        .bucket(&bucket)
        .send()
        .await
        .expect("create bucket");
    s3.put_bucket_versioning()
        .bucket(&bucket)
        .versioning_configuration(
            aws_sdk_s3::types::VersioningConfiguration::builder()
                .status(aws_sdk_s3::types::BucketVersioningStatus::Enabled)
                .build(),
        )
        .send()
        .await
        .expect("enable versioning");

    let images = distinct_png_server().await;
    let mut common = common_settings(&database, &bucket, &topics);
    // A killed member leaves the group after 6 s.
    common["kafka"]["properties"] = json!({"session.timeout.ms": "6000"});
    let topology = write_topology(dir.path(), &format!("{run_id}-image-pipeline"));

    let mut ports = BTreeMap::new();
    let mut configs = BTreeMap::new();
    for service in ["cdc-source", "complete-products", "product-collector"] {
        let port = free_port();
        ports.insert(service, port);
        configs.insert(
            service,
            write_settings(dir.path(), service, port, &common, None),
        );
    }
    for name in PIPELINES {
        // Each instance its own listen port and state directory.
        let instance_dir = dir.path().join(name);
        std::fs::create_dir_all(&instance_dir).expect("instance dir");
        let port = free_port();
        ports.insert(name, port);
        configs.insert(
            name,
            write_settings(
                &instance_dir,
                "image-pipeline",
                port,
                &common,
                Some(&topology),
            ),
        );
    }
    let mut children =
        Services::new(DEADLINE, Duration::from_millis(250)).printing(60, Some("CATALOG_E2E_LOGS"));
    for service in [
        "cdc-source",
        "complete-products",
        "product-collector",
        PIPELINES[0],
    ] {
        let kind = if service.starts_with("image-pipeline") {
            "image-pipeline"
        } else {
            service
        };
        children.spawn_named(dir.path(), service, kind, &configs[service]);
    }
    let run = ServiceClient::new(ports);
    let started = Instant::now();
    for service in [
        "cdc-source",
        "complete-products",
        "product-collector",
        PIPELINES[0],
    ] {
        children
            .wait_ready(&run.http, service, run.ports[service])
            .await;
    }
    eprintln!("services ready after {:?}", started.elapsed());

    let url =
        |product: &str, version: u32| format!("http://{images}{}", image_path(product, version));
    let body = |product: &str, version: u32| {
        json!({"mallId": MALL, "productId": product, "title": format!("Mug v{version}"),
               "content": "A mug", "price": "12000", "imageUrl": url(product, version)})
    };
    let ids: Vec<String> = (0..PRODUCTS).map(product_id).collect();
    let mut phases: Vec<(String, Duration)> = Vec::new();

    // 1. N products on one instance.
    let phase = Instant::now();
    for id in &ids {
        let (status, answer) = run.post_product(&body(id, 1)).await;
        assert_eq!(status, 201, "{answer}");
    }
    children
        .eventually("every product collected (v1)", || async {
            match at_version(&run, &bucket, &images.to_string(), 1).await {
                n if n == PRODUCTS => Ok(()),
                n => Err(format!("{n} of {PRODUCTS}")),
            }
        })
        .await;
    phases.push(("v1 on 1 instance".into(), phase.elapsed()));
    eprintln!("v1 collected after {:?}", started.elapsed());

    // 2. Two more instances join while every product gets a new image.
    let phase = Instant::now();
    for name in &PIPELINES[1..] {
        children.spawn_named(dir.path(), name, "image-pipeline", &configs[name]);
    }
    for id in &ids {
        let (status, answer) = run.post_product(&body(id, 2)).await;
        assert_eq!(status, 200, "{answer}");
    }
    for name in &PIPELINES[1..] {
        children.wait_ready(&run.http, name, run.ports[name]).await;
    }
    // Kill the first instance while the updates are still being collected somewhere: at
    // least a third, not yet all, if the pipeline is slow enough to let us.
    children
        .eventually("a third of v2 collected", || async {
            match at_version(&run, &bucket, &images.to_string(), 2).await {
                n if n >= PRODUCTS / 3 => Ok(n),
                n => Err(format!("{n} of {PRODUCTS}")),
            }
        })
        .await;
    // 3. SIGKILL the first instance (it holds the most state), then a third round of images
    // and a quarter of the products deleted.
    let status = children.stop_child(PIPELINES[0], "-KILL", Duration::from_secs(10));
    let v2_at_kill = at_version(&run, &bucket, &images.to_string(), 2).await;
    eprintln!(
        "{} SIGKILLed ({status}) after {:?}, {v2_at_kill} of {PRODUCTS} at v2",
        PIPELINES[0],
        started.elapsed()
    );
    // A quarter deleted: half of them right after their v3 update (racing with its
    // collection), the other half after the second instance is gone (their remover then works
    // on state the survivor took over).
    let deleted: BTreeSet<String> = ids.iter().step_by(4).cloned().collect();
    let deleted_early: BTreeSet<String> = ids.iter().step_by(8).cloned().collect();
    for id in &ids {
        let (status, answer) = run.post_product(&body(id, 3)).await;
        assert_eq!(status, 200, "{answer}");
        if deleted_early.contains(id) {
            delete_product(&run, id).await;
        }
    }
    let live: Vec<String> = ids
        .iter()
        .filter(|id| !deleted.contains(*id))
        .cloned()
        .collect();
    // 4. SIGTERM the second instance once some of the third round is through.
    let v3_at_term = children
        .eventually("some of v3 collected", || async {
            match at_version(&run, &bucket, &images.to_string(), 3).await {
                n if n >= live.len() / 4 => Ok(n),
                n => Err(format!("{n} of {}", live.len())),
            }
        })
        .await;
    let terminated = Instant::now();
    let status = children.stop_child(PIPELINES[1], "-TERM", Duration::from_secs(60));
    eprintln!(
        "{} SIGTERMed after {:?} ({v3_at_term} at v3), stopped within {:?}: {status}",
        PIPELINES[1],
        started.elapsed(),
        terminated.elapsed(),
    );
    assert!(
        status.success(),
        "{} exits cleanly on SIGTERM: {status}",
        PIPELINES[1]
    );
    for id in deleted.difference(&deleted_early) {
        delete_product(&run, id).await;
    }

    // 5. Convergence on the last instance: the view lists exactly the live products, each with
    // its latest image; the deleted ones answer 404 and their status says deleted.
    let survivor = PIPELINES[2];
    children
        .eventually("the view converged", || async {
            let listed = view(&run, &bucket).await?;
            let wrong: Vec<String> = listed
                .iter()
                .filter(|(id, item)| {
                    deleted.contains(*id)
                        || item.image_url != url(id, 3)
                        || item.sha256 != sha256_hex(&png_for(&image_path(id, 3)))
                })
                .map(|(id, item)| format!("{id}: {}", item.image_url))
                .collect();
            let listed_ids: BTreeSet<&String> = listed.keys().collect();
            let missing: Vec<&String> = live.iter().filter(|id| !listed_ids.contains(id)).collect();
            if !wrong.is_empty() || !missing.is_empty() {
                return Err(format!("wrong {wrong:?}; missing {missing:?}"));
            }
            for id in &deleted {
                let (status, state) = run
                    .get(
                        "complete-products",
                        &format!("/api/v1/products/{id}/status?mallId={MALL}"),
                    )
                    .await;
                if status != 200 || state["data"]["state"] != "deleted" {
                    return Err(format!("{id} status: {status} {state}"));
                }
            }
            Ok(())
        })
        .await;
    phases.push(("v2+v3+deletes while scaling".into(), phase.elapsed()));
    eprintln!("view converged after {:?}", started.elapsed());
    // Quiescence: nothing left to read on the survivor, which runs every task now.
    let phase = Instant::now();
    let sources = [
        topics["cdc"].as_str().expect("cdc").to_owned(),
        topics["upserts"].as_str().expect("upserts").to_owned(),
        topics["deletes"].as_str().expect("deletes").to_owned(),
    ];
    children
        .eventually("the survivor idle with every task", || async {
            let metrics = run.text(survivor, "/metrics").await;
            let lag: Vec<&str> = metrics
                .lines()
                .filter(|line| line.starts_with("topology_consumer_lag{"))
                .collect();
            let covered = sources.iter().all(|topic| {
                (0..PARTITIONS).all(|p| {
                    lag.iter().any(|line| {
                        line.contains(&format!("topic=\"{topic}\""))
                            && line.contains(&format!("partition=\"{p}\""))
                    })
                })
            });
            let idle = lag
                .iter()
                .all(|line| line.rsplit(' ').next().is_some_and(|v| v.trim() == "0"));
            let running = metric_sum(&metrics, "topology_tasks", &["state=\"running\""]);
            if covered && idle && running == f64::from(PARTITIONS) {
                Ok(())
            } else {
                Err(format!("running tasks {running}; lag:\n{}", lag.join("\n")))
            }
        })
        .await;
    phases.push(("quiescence".into(), phase.elapsed()));
    for id in &deleted {
        let (status, body) = run
            .get(
                "complete-products",
                &format!("/api/v1/complete-products/{id}?mallId={MALL}"),
            )
            .await;
        assert_eq!(status, 404, "deleted {id}: {body}");
    }

    // 6. The bucket: exactly one object per live product, its latest image; nothing else.
    let listed = view(&run, &bucket).await.expect("view");
    let objects: BTreeSet<String> = list_objects(&s3, &bucket, "").await.into_iter().collect();
    let referenced: BTreeSet<String> = listed.values().map(|item| item.key.clone()).collect();
    let orphans: Vec<&String> = objects.difference(&referenced).collect();
    let dangling: Vec<&String> = referenced.difference(&objects).collect();
    for (id, item) in &listed {
        let sha = sha256_hex(&png_for(&image_path(id, 3)));
        assert!(
            item.key.contains(&format!("/{id}/")) && item.key.contains(&sha),
            "{id}'s key {} names its product and latest sha256",
            item.key
        );
        assert_eq!(
            sha256_hex(&get_object(&s3, &bucket, &item.key).await),
            sha,
            "{id}'s stored bytes"
        );
    }
    let deleted_objects: Vec<&String> = objects
        .iter()
        .filter(|key| deleted.iter().any(|id| key.contains(&format!("/{id}/"))))
        .collect();

    // 7. The uploads, as the S3 server saw them: one version per PUT.
    let versions = object_versions(&s3, &bucket).await;
    let mut puts: BTreeMap<String, usize> = BTreeMap::new();
    let mut delete_markers = 0;
    for (key, marker) in &versions {
        if *marker {
            delete_markers += 1;
        } else {
            *puts.entry(key.clone()).or_default() += 1;
        }
    }
    let duplicates: Vec<(&String, &usize)> = puts.iter().filter(|(_, n)| **n > 1).collect();
    let uploads: usize = puts.values().sum();
    // Every image the pipeline had to store was stored: every version of a live product (a
    // product's changes are collected in order), v1 of a deleted one (its later versions may
    // rightly be skipped: its deletion, on another topic, can be processed first).
    let uploaded_sha: BTreeSet<String> = puts
        .keys()
        .filter_map(|key| key.rsplit('/').next())
        .filter_map(|name| name.split('.').next())
        .map(str::to_owned)
        .collect();
    let never_uploaded: Vec<String> = ids
        .iter()
        .flat_map(|id| {
            let versions: &[u32] = if deleted.contains(id) {
                &[1]
            } else {
                &[1, 2, 3]
            };
            versions
                .iter()
                .map(move |v| (id.clone(), *v))
                .collect::<Vec<_>>()
        })
        .filter(|(id, v)| !uploaded_sha.contains(&sha256_hex(&png_for(&image_path(id, *v)))))
        .map(|(id, v)| format!("{id} v{v}"))
        .collect();
    let survivor_metrics = run.text(survivor, "/metrics").await;
    eprintln!(
        "figures: products={PRODUCTS} live={} deleted={} listed={} objects={} orphans={} \
         dangling={} deleted_objects={} s3_puts={uploads} keys_put={} duplicate_puts={} \
         delete_markers={delete_markers} never_uploaded={} survivor_uploads={} \
         survivor_dead_letters={} v2_at_kill={v2_at_kill} total={:?}",
        live.len(),
        deleted.len(),
        listed.len(),
        objects.len(),
        orphans.len(),
        dangling.len(),
        deleted_objects.len(),
        puts.len(),
        duplicates.len(),
        never_uploaded.len(),
        metric_sum(&survivor_metrics, "catalog_image_uploads_total", &[]) as u64,
        metric_sum(&survivor_metrics, "topology_dead_letter_total", &[]) as u64,
        started.elapsed(),
    );
    for (phase, took) in &phases {
        eprintln!("phase {phase}: {took:?}");
    }
    assert_eq!(listed.len(), live.len(), "one listed product per live one");
    assert!(orphans.is_empty(), "orphan objects: {orphans:?}");
    assert!(
        dangling.is_empty(),
        "listed images not stored: {dangling:?}"
    );
    assert!(
        deleted_objects.is_empty(),
        "objects of deleted products: {deleted_objects:?}"
    );
    assert_eq!(
        objects.len(),
        live.len(),
        "exactly one object per live product"
    );
    assert!(
        duplicates.is_empty(),
        "keys uploaded more than once: {duplicates:?}"
    );
    assert!(
        never_uploaded.is_empty(),
        "images never uploaded: {never_uploaded:?}"
    );
    assert_eq!(
        metric_sum(&survivor_metrics, "topology_dead_letter_total", &[]),
        0.0,
        "nothing dead-lettered on the survivor"
    );
    children.assert_alive();
}
