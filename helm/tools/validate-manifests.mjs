// Validates what `helm template` rendered, beyond kubernetes-validate (which knows only the
// built-in kinds):
//   - the custom resources against their schemas: ServiceMonitor and PrometheusRule with
//     @kubernetes-models/prometheus-operator, ScaledObject with @kubernetes-models/keda,
//     KafkaConnect and KafkaConnector with the hand-written schemas in schemas/ (no package on a
//     reachable registry ships Strimzi's CRD schemas);
//   - that no other custom kind slips through unvalidated;
//   - the chart's own promises: every container non-root with a read-only root filesystem, no
//     privilege escalation, capabilities dropped, RuntimeDefault seccomp, requests and limits,
//     /healthz and /readyz probes; references between objects resolve.
// Usage: node validate-manifests.mjs [--rules-out FILE] [--metrics-out FILE] rendered.yaml...
// Exits 1 with every problem listed.
import { readFileSync, writeFileSync } from "node:fs";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";
import { parseAllDocuments, stringify } from "yaml";
import Ajv from "ajv";
import { ServiceMonitor } from "@kubernetes-models/prometheus-operator/monitoring.coreos.com/v1/ServiceMonitor";
import { PrometheusRule } from "@kubernetes-models/prometheus-operator/monitoring.coreos.com/v1/PrometheusRule";
import { ScaledObject } from "@kubernetes-models/keda/keda.sh/v1alpha1/ScaledObject";

const here = dirname(fileURLToPath(import.meta.url));
const ajv = new Ajv({ allErrors: true, strict: false });
const strimzi = {
  KafkaConnect: ajv.compile(JSON.parse(readFileSync(join(here, "schemas/strimzi-kafkaconnect.json"), "utf8"))),
  KafkaConnector: ajv.compile(JSON.parse(readFileSync(join(here, "schemas/strimzi-kafkaconnector.json"), "utf8"))),
};
const models = {
  "monitoring.coreos.com/v1/ServiceMonitor": ServiceMonitor,
  "monitoring.coreos.com/v1/PrometheusRule": PrometheusRule,
  "keda.sh/v1alpha1/ScaledObject": ScaledObject,
};

const args = process.argv.slice(2);
let rulesOut = null;
let metricsOut = null;
const files = [];
for (let i = 0; i < args.length; i++) {
  if (args[i] === "--rules-out") rulesOut = args[++i];
  else if (args[i] === "--metrics-out") metricsOut = args[++i];
  else files.push(args[i]);
}

const problems = [];
const checked = [];
const docs = [];
for (const file of files) {
  for (const doc of parseAllDocuments(readFileSync(file, "utf8"))) {
    if (doc.errors.length) problems.push(`${file}: YAML: ${doc.errors.map((e) => e.message).join("; ")}`);
    const obj = doc.toJS();
    if (obj) docs.push({ file, obj });
  }
}

const isBuiltIn = (apiVersion) => {
  const group = apiVersion.includes("/") ? apiVersion.split("/")[0] : "";
  return group === "" || !group.includes(".") || group.endsWith(".k8s.io");
};
const id = (o) => `${o.kind}/${o.metadata?.name}`;

// Schemas of the custom kinds.
for (const { file, obj } of docs) {
  const where = `${file}: ${id(obj)}`;
  const key = `${obj.apiVersion}/${obj.kind}`;
  if (models[key]) {
    try {
      new models[key](obj).validate();
      checked.push(`${id(obj)} (${obj.apiVersion}) against @kubernetes-models`);
    } catch (e) {
      problems.push(`${where}: ${e.message}`);
    }
  } else if (obj.apiVersion?.startsWith("kafka.strimzi.io/") && strimzi[obj.kind]) {
    if (strimzi[obj.kind](obj)) checked.push(`${id(obj)} (${obj.apiVersion}) against schemas/strimzi-${obj.kind.toLowerCase()}.json`);
    else problems.push(...strimzi[obj.kind].errors.map((e) => `${where}: ${e.instancePath || "/"} ${e.message} ${JSON.stringify(e.params)}`));
  } else if (!isBuiltIn(obj.apiVersion ?? "")) {
    problems.push(`${where}: custom kind ${key} has no schema here: add one before rendering it`);
  }
}

// The chart's promises for every workload.
const byKind = (kind) => docs.map((d) => d.obj).filter((o) => o.kind === kind);
for (const dep of byKind("Deployment")) {
  const pod = dep.spec.template.spec;
  if (pod.securityContext?.runAsNonRoot !== true) problems.push(`${id(dep)}: pod securityContext.runAsNonRoot is not true`);
  if (pod.automountServiceAccountToken !== false) problems.push(`${id(dep)}: automountServiceAccountToken is not false`);
  for (const c of [...(pod.initContainers ?? []), ...pod.containers]) {
    const where = `${id(dep)} container ${c.name}`;
    const sc = c.securityContext ?? {};
    if (sc.runAsNonRoot !== true) problems.push(`${where}: runAsNonRoot is not true`);
    if (!(sc.runAsUser > 0)) problems.push(`${where}: runAsUser is not a non-root uid`);
    if (sc.readOnlyRootFilesystem !== true) problems.push(`${where}: readOnlyRootFilesystem is not true`);
    if (sc.allowPrivilegeEscalation !== false) problems.push(`${where}: allowPrivilegeEscalation is not false`);
    if (!(sc.capabilities?.drop ?? []).includes("ALL")) problems.push(`${where}: capabilities.drop lacks ALL`);
    if (sc.seccompProfile?.type !== "RuntimeDefault") problems.push(`${where}: seccompProfile is not RuntimeDefault`);
    for (const k of ["requests", "limits"])
      for (const r of ["cpu", "memory"])
        if (!c.resources?.[k]?.[r]) problems.push(`${where}: resources.${k}.${r} missing`);
    if (c.livenessProbe?.httpGet?.path !== "/healthz") problems.push(`${where}: liveness probe is not GET /healthz`);
    if (c.readinessProbe?.httpGet?.path !== "/readyz") problems.push(`${where}: readiness probe is not GET /readyz`);
    const mounts = (c.volumeMounts ?? []).map((m) => m.mountPath);
    if (!mounts.includes("/tmp")) problems.push(`${where}: no writable /tmp volume`);
    const args = c.args ?? [];
    if (args[1] !== "--config" || !args[2]) problems.push(`${where}: args are not "<subcommand> --config <file>"`);
  }
  checked.push(`${id(dep)}: security context, resources, probes, volumes`);
}

// References between objects.
const names = (kind) => new Set(byKind(kind).map((o) => o.metadata.name));
const deployments = names("Deployment");
for (const so of [...byKind("ScaledObject"), ...byKind("HorizontalPodAutoscaler")]) {
  const target = so.spec.scaleTargetRef.name;
  if (!deployments.has(target)) problems.push(`${id(so)}: scales ${target}, which is not rendered`);
  const dep = byKind("Deployment").find((d) => d.metadata.name === target);
  if (dep && dep.spec.replicas !== undefined) problems.push(`${id(so)}: ${target} sets replicas, which would fight the autoscaler`);
}
if (byKind("ScaledObject").length && byKind("HorizontalPodAutoscaler").length)
  problems.push("both a ScaledObject and an HPA are rendered: KEDA makes its own HPA");
const connects = names("KafkaConnect");
for (const kc of byKind("KafkaConnector")) {
  const cluster = kc.metadata.labels?.["strimzi.io/cluster"];
  if (!connects.has(cluster)) problems.push(`${id(kc)}: strimzi.io/cluster=${cluster} names no rendered KafkaConnect`);
  if (kc.spec.class !== "io.debezium.connector.mongodb.MongoDbConnector") problems.push(`${id(kc)}: class is ${kc.spec.class}`);
  for (const side of ["key", "value"])
    if (!/AvroConverter$/.test(kc.spec.config[`${side}.converter`] ?? "")) problems.push(`${id(kc)}: ${side}.converter is not an Avro converter`);
  if (!Object.entries(kc.spec.config).some(([k, v]) => /converter\..*registry\.url$/.test(k) && /^https?:\/\//.test(v)))
    problems.push(`${id(kc)}: the converters do not point at a schema registry`);
}
for (const kc of byKind("KafkaConnect"))
  if (kc.metadata.annotations?.["strimzi.io/use-connector-resources"] !== "true")
    problems.push(`${id(kc)}: lacks strimzi.io/use-connector-resources: "true"`);
const services = byKind("Service");
for (const sm of byKind("ServiceMonitor")) {
  const sel = sm.spec.selector.matchLabels ?? {};
  const hits = services.filter((s) => Object.entries(sel).every(([k, v]) => s.metadata.labels?.[k] === v));
  if (!hits.length) problems.push(`${id(sm)}: selects no rendered Service`);
  for (const ep of sm.spec.endpoints)
    for (const s of hits)
      if (!s.spec.ports.some((p) => p.name === ep.port)) problems.push(`${id(sm)}: ${s.metadata.name} has no port ${ep.port}`);
}
// The ConfigMap's files parse as YAML (after the service fills in its ${...} placeholders).
const cm = byKind("ConfigMap")[0];
for (const key of ["config.yaml", "topology-image-pipeline.yaml", "topology-complete-products.yaml"]) {
  const text = cm?.data?.[key];
  if (!text) { problems.push(`the ConfigMap lacks ${key}`); continue; }
  const parsed = parseAllDocuments(text.replace(/\$\{[^}]*\}/g, '"placeholder"'));
  if (parsed.length !== 1 || parsed[0].errors.length) problems.push(`ConfigMap ${key} is not one YAML document: ${parsed.flatMap((d) => d.errors.map((e) => e.message)).join("; ")}`);
  else checked.push(`ConfigMap ${key} parses`);
}

// The rules for promtool, and the metric names the rules and autoscalers use.
const rules = byKind("PrometheusRule").flatMap((r) => r.spec.groups);
if (rulesOut && rules.length) writeFileSync(rulesOut, stringify({ groups: rules }, { lineWidth: 0 }));
const metrics = new Set();
const promqlWords = new Set(["sum", "max", "min", "avg", "by", "without", "rate", "increase", "count", "on", "ignoring", "group_left", "group_right", "and", "or", "unless", "bool", "offset", "absent"]);
for (const g of rules)
  for (const r of g.rules)
    for (const m of String(r.expr).replace(/"[^"]*"/g, '""').replace(/\b(by|without|on|ignoring)\s*\([^)]*\)/g, "").matchAll(/\b([a-zA-Z_:][a-zA-Z0-9_:]*)\s*(\{|\[|\)|$|\s>|\s==)/gm))
      if (!promqlWords.has(m[1])) metrics.add(m[1]);
for (const h of byKind("HorizontalPodAutoscaler"))
  for (const m of h.spec.metrics) metrics.add((m.external ?? m.pods)?.metric?.name);
metrics.delete(undefined);
if (metricsOut) writeFileSync(metricsOut, [...metrics].sort().join("\n") + "\n");

for (const c of checked) console.log(`  ok  ${c}`);
if (metrics.size) console.log(`  metrics used by rules and autoscalers: ${[...metrics].sort().join(", ")}`);
if (problems.length) {
  for (const p of problems) console.error(`  FAIL ${p}`);
  process.exit(1);
}
