// The dspy-registry dashboard: plain DOM, no build step. Every value from the server goes into the
// page as text (textContent through el()), never as markup. The token lives in sessionStorage and
// travels only in the Authorization header; the live stream is read with fetch() for that reason
// (EventSource cannot send headers).
"use strict";

const TOKEN_KEY = "dspy-registry-token";
const main = document.getElementById("main");
let session = null; // {who, token}
let leaving = []; // what the current view must stop when another opens (live streams)
let generation = 0; // counts the views opened: an answer for an older one is dropped

// ---- DOM helpers: text only -------------------------------------------------------------------

function el(tag, props, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(props || {})) {
    if (value === undefined || value === null || value === false) continue;
    if (key.startsWith("on")) node.addEventListener(key.slice(2), value);
    else if (key === "className") node.className = value;
    else if (key === "dataset") Object.assign(node.dataset, value);
    else node.setAttribute(key, value === true ? "" : String(value));
  }
  for (const child of children.flat()) {
    if (child === undefined || child === null || child === false) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

function show(...nodes) {
  main.replaceChildren(...nodes.filter((n) => n !== null && n !== undefined && n !== false));
}

function table(headers, rows, props) {
  return el(
    "table",
    props,
    el("thead", {}, el("tr", {}, headers.map((h) => el("th", {}, h)))),
    el("tbody", {}, rows.map((cells) => el("tr", {}, cells.map((c) => el("td", {}, c))))),
  );
}

function definitions(pairs) {
  return el("dl", {}, pairs.flatMap(([k, v]) => [el("dt", {}, k), el("dd", {}, v)]));
}

function link(href, text) {
  return el("a", { href }, text);
}

function enumName(value, prefix) {
  return String(value || "").replace(prefix, "").toLowerCase().replace(/_/g, " ");
}

function when(stamp) {
  return stamp ? new Date(stamp).toLocaleString() : "";
}

function short(name) {
  return String(name || "").split("/").pop();
}

function percent(value) {
  return value === undefined || value === null ? "–" : `${(value * 100).toFixed(1)} %`;
}

function number(value, digits = 3) {
  return value === undefined || value === null ? "–" : Number(value).toFixed(digits);
}

function notice(text, kind = "error") {
  return el("p", { className: `notice ${kind}`, role: kind === "error" ? "alert" : "status" }, text);
}

// ---- The API -----------------------------------------------------------------------------------

// An answer that came after the view that asked for it was left: dropped, never shown.
class Superseded extends Error {}

class ApiError extends Error {
  constructor(status, body) {
    super((body && body.error && body.error.message) || `HTTP ${status}`);
    this.status = status;
    this.code = body && body.error ? body.error.code : "";
  }
}

async function api(path, options = {}) {
  const asked = generation;
  const headers = { Accept: "application/json" };
  if (session) headers.Authorization = `Bearer ${session.token}`;
  if (options.body !== undefined) headers["Content-Type"] = "application/json";
  const response = await fetch(path, {
    method: options.method || "GET",
    headers,
    body: options.body === undefined ? undefined : JSON.stringify(options.body),
    cache: "no-store",
    credentials: "omit",
    referrerPolicy: "no-referrer",
  });
  const body = await response.json().catch(() => null);
  if (asked !== generation) throw new Superseded(path);
  if (!response.ok) throw new ApiError(response.status, body);
  return body;
}

function query(params) {
  const search = new URLSearchParams();
  for (const [k, v] of Object.entries(params)) if (v) search.set(k, v);
  const text = search.toString();
  return text ? `?${text}` : "";
}

// ---- SemVer order ------------------------------------------------------------------------------

function semverKey(version) {
  const [core, pre = ""] = String(version).split("+")[0].split(/-(.*)/s);
  return { nums: core.split(".").map((n) => Number(n) || 0), pre: pre ? pre.split(".") : [] };
}

function compareSemver(a, b) {
  const x = semverKey(a);
  const y = semverKey(b);
  for (let i = 0; i < 3; i++) if (x.nums[i] !== y.nums[i]) return x.nums[i] - y.nums[i];
  if (!x.pre.length || !y.pre.length) return y.pre.length - x.pre.length; // a release after its pre-releases
  for (let i = 0; i < Math.max(x.pre.length, y.pre.length); i++) {
    const [p, q] = [x.pre[i], y.pre[i]];
    if (p === undefined) return -1;
    if (q === undefined) return 1;
    const [pn, qn] = [/^\d+$/.test(p), /^\d+$/.test(q)];
    if (pn && qn && Number(p) !== Number(q)) return Number(p) - Number(q);
    if (pn !== qn) return pn ? -1 : 1;
    if (p !== q) return p < q ? -1 : 1;
  }
  return 0;
}

// ---- Signing in --------------------------------------------------------------------------------

async function signIn(token) {
  session = { token, who: null };
  try {
    session.who = await api("/api/dashboard/whoami");
  } catch (error) {
    session = null;
    sessionStorage.removeItem(TOKEN_KEY);
    throw error;
  }
  sessionStorage.setItem(TOKEN_KEY, token);
  const abilities = await api("/api/dashboard/abilities");
  document.getElementById("nav").hidden = false;
  document.getElementById("nav-audit").hidden = !abilities.audit;
  document.getElementById("sign-out").hidden = false;
  const principal = session.who.principal || {};
  document.getElementById("who").textContent = short(principal.name);
}

function signOut() {
  sessionStorage.removeItem(TOKEN_KEY);
  session = null;
  document.getElementById("nav").hidden = true;
  document.getElementById("sign-out").hidden = true;
  document.getElementById("who").textContent = "";
  route();
}

function signInView(message) {
  const input = el("input", {
    type: "password",
    id: "token",
    autocomplete: "off",
    placeholder: "paste a bearer token",
  });
  const form = el(
    "form",
    {
      id: "sign-in",
      onsubmit: async (event) => {
        event.preventDefault();
        try {
          await signIn(input.value.trim());
          route();
        } catch (error) {
          signInView(`Not signed in: ${error.message}`);
        }
      },
    },
    el("h1", {}, "Sign in"),
    el("p", {}, "Paste a token (dspy-registry token create). It is kept in this tab only."),
    input,
    el("button", { type: "submit" }, "Sign in"),
  );
  show(form, message ? notice(message) : null);
  input.focus();
}

// ---- Programs ----------------------------------------------------------------------------------

async function programsView(params) {
  const q = el("input", { name: "q", placeholder: "name starts with", value: params.get("q") || "" });
  const label = el("input", { name: "label", placeholder: "label key=value", value: params.get("label") || "" });
  const form = el(
    "form",
    {
      id: "search",
      onsubmit: (event) => {
        event.preventDefault();
        location.hash = `#/programs${query({ q: q.value.trim(), label: label.value.trim() })}`;
      },
    },
    q,
    label,
    el("button", { type: "submit" }, "Search"),
  );
  show(el("h1", {}, "Programs"), form, el("p", {}, "Loading…"));
  const found = await api(`/api/dashboard/programs${query({ q: params.get("q"), label: params.get("label") })}`);
  const rows = found.programs.map((p) => [
    link(`#/programs/${encodeURIComponent(short(p.name))}`, short(p.name)),
    p.latest_version,
    String(p.version_count),
    Object.entries(p.labels || {}).map(([k, v]) => el("span", { className: "label" }, `${k}=${v}`)),
    (p.environments || []).map((e) => el("span", { className: "env" }, environmentText(e))),
  ]);
  show(
    el("h1", {}, "Programs"),
    form,
    rows.length
      ? table(["Program", "Latest", "Versions", "Labels", "Serving"], rows, { id: "programs" })
      : el("p", {}, "No program matches."),
  );
}

function environmentText(e) {
  const target = e.target || {};
  const stable = target.stable && target.stable.version;
  const candidate = target.candidate && target.candidate.version;
  let text = `${e.environment}: ${stable || "nothing"}`;
  if (candidate) text += ` + ${candidate} at ${target.candidate.weight_percent} %`;
  return text;
}

async function programView(name) {
  const program = await api(`/api/registry/programs/${encodeURIComponent(name)}`);
  const versions = [...program.versions].sort((a, b) => compareSemver(b.version, a.version));
  const base = el("select", { id: "compare-base" }, versions.map((v) => el("option", { value: v.version }, v.version)));
  const target = el("select", { id: "compare-target" }, versions.map((v) => el("option", { value: v.version }, v.version)));
  if (versions.length > 1) base.value = versions[1].version;
  const compare = el(
    "form",
    {
      id: "compare",
      onsubmit: (event) => {
        event.preventDefault();
        location.hash = `#/programs/${encodeURIComponent(name)}/compare${query({ base: base.value, target: target.value })}`;
      },
    },
    "Compare ",
    base,
    " with ",
    target,
    el("button", { type: "submit" }, "Compare"),
  );
  const envRows = program.environments.map((e) => {
    const t = e.target || {};
    return [
      e.environment,
      (t.stable && t.stable.version) || "–",
      (t.candidate && t.candidate.version) || "–",
      t.candidate && t.candidate.version ? `${t.candidate.weight_percent} %` : "–",
      deploymentLink((e.deployment && e.deployment.name) || t.deployment),
    ];
  });
  show(
    el("h1", {}, program.name),
    el("h2", {}, "Environments"),
    table(["Environment", "Stable", "Candidate", "Weight", "Deployment"], envRows, { id: "environments" }),
    el("h2", {}, "Versions"),
    compare,
    table(
      ["Version", "Created", "Change", "Performance", ""],
      versions.map((v) => [
        link(`#/programs/${encodeURIComponent(name)}/versions/${encodeURIComponent(v.version)}`, v.version),
        when(v.create_time),
        v.change_type && v.change_type !== "CHANGE_TYPE_UNSPECIFIED" ? enumName(v.change_type, "CHANGE_TYPE_") : "–",
        Object.entries(v.performance || {}).map(([k, x]) => `${k} ${number(x)}`).join(", "),
        v.yanked ? el("span", { className: "yanked", title: v.yank_reason || "" }, "yanked") : "",
      ]),
      { id: "versions" },
    ),
    el("h2", {}, "Deployments"),
    deploymentsTable(program.deployments),
  );
}

function deploymentLink(name) {
  return name ? link(`#/deployments/${short(name)}`, short(name)) : "–";
}

function deploymentsTable(deployments) {
  return table(
    ["Deployment", "Environment", "Version", "State", "Weight", "Created"],
    deployments.map((d) => [
      link(`#/deployments/${short(d.name)}`, short(d.name)),
      d.environment,
      d.version,
      el("span", { className: `state ${d.state}` }, enumName(d.state, "DEPLOYMENT_STATE_")),
      `${d.weight_percent} %`,
      when(d.create_time),
    ]),
    { className: "deployments" },
  );
}

// A signature field's type as people write it: string, list[float], enum(positive, negative).
function typeText(type) {
  if (!type) return "";
  const kind = enumName(type.kind, "KIND_");
  if (kind === "list") return `list[${typeText(type.item_type)}]`;
  if (kind === "enum") return `enum(${(type.enum_values || []).join(", ")})`;
  return kind;
}

async function versionView(name, version) {
  const found = await api(`/api/dashboard/programs/${encodeURIComponent(name)}/versions/${encodeURIComponent(version)}`);
  const v = found.program_version;
  const metadata = v.metadata || {};
  const spec = (found.signature && found.signature.spec) || {};
  const fields = (kind, list) =>
    (list || []).map((f) => [kind, f.name, typeText(f.type), f.description || ""]);
  const rest = Object.entries(metadata).filter(([k]) => k !== "changelog");
  show(
    el("h1", {}, `${name} ${v.version}`, v.yanked ? el("span", { className: "yanked" }, " yanked") : ""),
    v.yanked ? notice(`Yanked: ${v.yank_reason}`, "warning") : null,
    definitions([
      ["Signature", v.signature],
      ["Created", `${when(v.create_time)} by ${short(v.creator)}`],
      ["Artifact digest", el("code", { id: "digest" }, (v.artifact || {}).digest || "")],
      ["Artifact size", `${(v.artifact || {}).size_bytes || 0} bytes`],
      ["Previous version", v.previous_version || "–"],
      ["Labels", Object.entries(v.labels || {}).map(([k, x]) => el("span", { className: "label" }, `${k}=${x}`))],
    ]),
    el("h2", {}, "Signature fields"),
    table(["", "Field", "Type", "Description"], [...fields("input", spec.input_fields), ...fields("output", spec.output_fields)], {
      id: "fields",
    }),
    el("h2", {}, "Performance"),
    table(["Metric", "Value"], Object.entries(v.performance || {}).map(([k, x]) => [k, number(x)]), { id: "performance" }),
    el("h2", {}, "Changelog"),
    el("pre", { id: "changelog" }, metadata.changelog === undefined ? "–" : String(metadata.changelog)),
    el("h2", {}, "Metadata"),
    el("pre", { id: "metadata" }, rest.length ? JSON.stringify(Object.fromEntries(rest), null, 2) : "–"),
    el("p", {}, link(`#/programs/${encodeURIComponent(name)}`, `All versions of ${name}`)),
  );
}

async function compareView(name, params) {
  const base = params.get("base");
  const target = params.get("target");
  const c = await api(`/api/dashboard/programs/${encodeURIComponent(name)}/compare${query({ base, target })}`);
  const compatibility = c.compatibility || {};
  show(
    el("h1", {}, `${name}: ${base} → ${target}`),
    el(
      "p",
      { id: "recommendation", className: `recommendation ${c.recommendation}` },
      `Recommendation: ${enumName(c.recommendation, "RECOMMENDATION_")}`,
    ),
    el("ul", { id: "reasons" }, (c.reasons || []).map((r) => el("li", {}, r))),
    el("div", { className: "side-by-side" },
      [c.base, c.target].map((v) =>
        el("section", {}, el("h2", {}, v.version), definitions([
          ["Digest", el("code", {}, (v.artifact || {}).digest || "")],
          ["Signature", v.signature],
          ["Created", when(v.create_time)],
          ["Yanked", v.yanked ? "yes" : "no"],
        ])),
      ),
    ),
    el("h2", {}, "Metrics"),
    table(
      ["Metric", base, target, "Change"],
      (c.performance_diff || []).map((d) => [
        d.metric,
        number(d.base_value),
        number(d.target_value),
        el(
          "span",
          { className: (d.change >= 0) === d.higher_is_better ? "better" : "worse" },
          `${d.change >= 0 ? "+" : ""}${number(d.change)}${d.change_percent === undefined ? "" : ` (${number(d.change_percent, 1)} %)`}`,
        ),
      ]),
      { id: "metric-deltas" },
    ),
    el("h2", {}, "Signature compatibility"),
    el(
      "p",
      { id: "compatibility" },
      enumName(compatibility.level, "COMPATIBILITY_LEVEL_"),
      compatibility.required_change && compatibility.required_change !== "CHANGE_TYPE_UNSPECIFIED"
        ? `: needs a ${enumName(compatibility.required_change, "CHANGE_TYPE_")} version`
        : "",
    ),
    el("ul", {}, (compatibility.changes || []).map((s) => el("li", {}, `${s.path}: ${s.description}`))),
    el("h2", {}, "Configuration"),
    table(
      ["Path", base, target],
      (c.configuration_diff || []).map((d) => [d.path, d.base_value, d.target_value]),
      { id: "config-diff" },
    ),
  );
}

// ---- Deployments -------------------------------------------------------------------------------

async function deploymentsView(params) {
  const found = await api(`/api/dashboard/deployments${query({ program: params.get("program") })}`);
  show(el("h1", {}, "Deployments"), deploymentsTable(found.deployments));
}

const ACTIONS = {
  approve: { ability: "approve", states: ["PENDING_APPROVAL"], says: "approve" },
  reject: { ability: "approve", states: ["PENDING_APPROVAL"], says: "reject" },
  promote: { ability: "deploy", states: ["IN_PROGRESS"], says: "promote to the next step" },
  abort: { ability: "deploy", states: ["PENDING_APPROVAL", "PENDING_CHECKS", "IN_PROGRESS"], says: "abort" },
  rollback: { ability: "rollback", states: ["SUCCEEDED", "IN_PROGRESS"], says: "roll back" },
};

function confirmAction(text) {
  const dialog = document.getElementById("confirm");
  document.getElementById("confirm-text").textContent = text;
  const reason = document.getElementById("confirm-reason");
  reason.value = "";
  return new Promise((resolve) => {
    const done = (ok) => {
      dialog.close();
      ok_.removeEventListener("click", yes);
      no.removeEventListener("click", nay);
      resolve(ok ? reason.value : null);
    };
    const ok_ = document.getElementById("confirm-ok");
    const no = document.getElementById("confirm-cancel");
    const yes = () => done(true);
    const nay = () => done(false);
    ok_.addEventListener("click", yes);
    no.addEventListener("click", nay);
    dialog.showModal();
  });
}

function actionButtons(d, abilities, refresh) {
  const state = String(d.state).replace("DEPLOYMENT_STATE_", "");
  const buttons = Object.entries(ACTIONS)
    .filter(([, a]) => abilities[a.ability] && a.states.includes(state))
    .map(([name, a]) =>
      el(
        "button",
        {
          type: "button",
          className: `action ${name}`,
          dataset: { action: name },
          onclick: async () => {
            const what = `This will ${a.says} deployment ${short(d.name)}: ${d.program} ${d.version} in ${d.environment}.`;
            const reason = await confirmAction(what);
            if (reason === null) return;
            const id = short(d.name);
            const path = name === "rollback" ? `/api/registry/deployments/${id}/rollback` : `/api/dashboard/deployments/${id}/${name}`;
            const body = name === "rollback" ? { reason } : { reason, etag: d.etag };
            try {
              await api(path, { method: "POST", body });
              refresh();
            } catch (error) {
              document.getElementById("actions").append(notice(`${name} refused: ${error.message}`));
            }
          },
        },
        name,
      ),
    );
  return el("div", { id: "actions" }, buttons);
}

// One chart per metric: each version's values over time, and the threshold as a dashed line.
const CHARTS = [
  { id: "error_rate", title: "Error rate", value: (h) => h.error_rate, check: "error_rate" },
  { id: "latency_p95_ms", title: "p95 latency (ms)", value: (h) => h.latency_p95_ms, check: "latency_p95_ms" },
  { id: "accuracy", title: "Accuracy", value: (h) => h.accuracy, check: null },
];
const COLOURS = ["#2563eb", "#dc2626", "#16a34a", "#9333ea"];

class LiveCharts {
  constructor(container) {
    this.container = container;
    this.times = [];
    this.samples = []; // per time: {version: health}
    this.thresholds = {};
    this.versions = [];
    this.plots = {};
  }

  add(health) {
    const at = Date.now() / 1000;
    const sample = {};
    for (const h of health) {
      sample[h.version] = h;
      if (!this.versions.includes(h.version)) this.versions.push(h.version);
      for (const c of h.checks || []) this.thresholds[c.metric] = c.threshold;
    }
    this.times.push(at);
    this.samples.push(sample);
    this.draw();
  }

  draw() {
    if (typeof uPlot === "undefined") return;
    for (const chart of CHARTS) {
      const series = [{}];
      const data = [this.times];
      this.versions.forEach((version, i) => {
        series.push({ label: version, stroke: COLOURS[i % COLOURS.length], width: 2, spanGaps: true });
        data.push(this.samples.map((s) => (s[version] ? (chart.value(s[version]) ?? null) : null)));
      });
      const threshold = chart.check ? this.thresholds[chart.check] : undefined;
      if (threshold !== undefined) {
        series.push({ label: "threshold", stroke: "#f59e0b", dash: [6, 4], width: 1 });
        data.push(this.times.map(() => threshold));
      }
      const key = chart.id;
      const old = this.plots[key];
      if (old && old.series.length === series.length) {
        old.setData(data);
        continue;
      }
      if (old) old.destroy();
      const holder = this.container.querySelector(`[data-chart="${key}"]`);
      this.plots[key] = new uPlot(
        { title: chart.title, width: 420, height: 220, series, scales: { x: { time: true } } },
        data,
        holder,
      );
    }
  }
}

// Reads the server-sent events of `program` over fetch (the bearer header goes with it), calling
// `onItem` for each; opens the stream again after an end or a fault until `signal` aborts.
async function follow(program, signal, onItem, onState) {
  while (!signal.aborted) {
    try {
      const response = await fetch(`/api/dashboard/live${query({ program })}`, {
        headers: { Authorization: `Bearer ${session.token}`, Accept: "text/event-stream" },
        cache: "no-store",
        credentials: "omit",
        signal,
      });
      if (!response.ok) throw new ApiError(response.status, await response.json().catch(() => null));
      onState("live");
      const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
      let buffer = "";
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        buffer += value;
        let end;
        while ((end = buffer.indexOf("\n\n")) >= 0) {
          const block = buffer.slice(0, end);
          buffer = buffer.slice(end + 2);
          const data = block.split("\n").filter((l) => l.startsWith("data: ")).map((l) => l.slice(6)).join("\n");
          if (data) onItem(JSON.parse(data));
        }
      }
    } catch (error) {
      if (signal.aborted) return;
      if (error instanceof ApiError && (error.status === 401 || error.status === 403 || error.status === 404)) {
        onState(`stopped: ${error.message}`);
        return;
      }
    }
    onState("reconnecting");
    await new Promise((resolve) => setTimeout(resolve, 2000)); // a pause before opening it again
  }
}

async function deploymentView(id) {
  const abortion = new AbortController();
  leaving.push(() => abortion.abort());
  const liveState = el("span", { id: "live-state" }, "connecting");
  const charts = el("div", { id: "charts" }, CHARTS.map((c) => el("div", { className: "chart", dataset: { chart: c.id } })));
  const live = new LiveCharts(charts);
  const parts = {
    head: el("div"),
    actions: el("div"),
    verdict: el("div"),
    steps: el("div"),
    health: el("div"),
    fleet: el("div"),
    timeline: el("div"),
    approvals: el("div"),
  };
  show(
    parts.head,
    parts.actions,
    el("h2", {}, "Live health ", liveState),
    parts.verdict,
    charts,
    parts.health,
    el("h2", {}, "Strategy"),
    parts.steps,
    el("h2", {}, "Fleet"),
    parts.fleet,
    el("h2", {}, "Approvals"),
    parts.approvals,
    el("h2", {}, "Timeline"),
    parts.timeline,
  );
  let abilities = null;
  let pending = null;
  const refresh = async () => {
    const found = await api(`/api/dashboard/deployments/${encodeURIComponent(id)}`);
    const d = found.deployment;
    const status = found.status;
    if (!abilities) abilities = await api(`/api/dashboard/abilities${query({ program: d.program })}`);
    const current = status.current_deployment || {};
    const ours = current.name === d.name;
    parts.head.replaceChildren(
      el("h1", {}, `Deployment ${short(d.name)}`),
      definitions([
        ["Program", link(`#/programs/${encodeURIComponent(d.program)}`, d.program)],
        ["Version", d.version],
        ["Environment", d.environment],
        ["State", el("span", { id: "state", className: `state ${d.state}` }, enumName(d.state, "DEPLOYMENT_STATE_"))],
        ["Step", el("span", { id: "step" }, `${d.current_step} of ${d.step_count}`)],
        ["Weight", el("span", { id: "weight" }, `${d.weight_percent} %`)],
        ["Reason", d.reason || "–"],
        d.rollback_deployment
          ? ["Rolled back by", link(`#/deployments/${short(d.rollback_deployment)}`, short(d.rollback_deployment))]
          : null,
      ].filter(Boolean)),
      ...(d.paused ? [notice(`Paused: ${d.pause_reason}`, "warning")] : []),
    );
    parts.actions.replaceChildren(actionButtons(d, abilities, () => refresh().catch(showError)));
    parts.verdict.replaceChildren(
      el(
        "p",
        { id: "verdict", className: `verdict ${status.verdict}` },
        `Verdict: ${enumName(status.verdict, "HEALTH_VERDICT_")}`,
        ours ? "" : " (for the environment's current deployment)",
      ),
    );
    const health = status.health || [];
    live.add(health);
    parts.health.replaceChildren(
      table(
        ["Version", "Role", "Requests", "Error rate", "p95 ms", "Accuracy", "Verdict", "Checks"],
        health.map((h) => [
          h.version,
          enumName(h.role, "TRAFFIC_ROLE_"),
          String(h.request_count),
          percent(h.error_rate),
          number(h.latency_p95_ms, 0),
          percent(h.accuracy),
          enumName(h.verdict, "HEALTH_VERDICT_"),
          (h.checks || []).map((c) => el("div", {}, `${c.metric} ${number(c.value)} / ${number(c.threshold)}: ${c.message || enumName(c.verdict, "HEALTH_VERDICT_")}`)),
        ]),
        { id: "health" },
      ),
    );
    const canary = (d.strategy || {}).strategy === "STRATEGY_CANARY";
    const steps = canary ? ((d.strategy || {}).canary || {}).steps || [] : [];
    parts.steps.replaceChildren(
      el("p", {}, enumName((d.strategy || {}).strategy, "STRATEGY_")),
      el(
        "ol",
        { id: "steps" },
        steps.map((s, i) =>
          el("li", { className: i + 1 === d.current_step ? "current" : i + 1 < d.current_step ? "done" : "" }, `${s.weight_percent} %${s.pause ? ` then wait ${s.pause}` : ""}`),
        ),
      ),
    );
    parts.fleet.replaceChildren(
      table(
        ["Sidecar", "Version", "Result", "Error", "Last report"],
        (status.sidecars || []).flatMap((s) =>
          (s.targets || [])
            .filter((t) => t.program === d.program && t.environment === d.environment)
            .map((t) => [
              s.sidecar_id,
              t.version,
              el("span", { className: `result ${t.result}` }, enumName(t.result, "APPLY_RESULT_").toUpperCase()),
              (t.error_detail && t.error_detail.message) || "",
              when(s.last_report_time),
            ]),
        ),
        { id: "fleet" },
      ),
    );
    parts.approvals.replaceChildren(
      el(
        "p",
        {},
        d.required_approvals
          ? `${(d.approvals || []).filter((a) => !a.rejected).length} of ${d.required_approvals} required`
          : "None required",
      ),
      table(
        ["Principal", "Decision", "Comment", "Time"],
        (d.approvals || []).map((a) => [short(a.principal), a.rejected ? "rejected" : "approved", a.comment, when(a.time)]),
        { id: "approvals" },
      ),
    );
    parts.timeline.replaceChildren(
      table(
        ["Time", "Event", "State", "Step", "By", "Reason"],
        (d.timeline || []).map((t) => [
          when(t.time),
          enumName(t.kind, "DEPLOYMENT_EVENT_KIND_"),
          enumName(t.state, "DEPLOYMENT_STATE_"),
          String(t.step),
          short(t.actor),
          t.reason,
        ]),
        { id: "timeline" },
      ),
    );
    return d;
  };
  const first = await refresh();
  // A burst of events and pulses is one read: the first schedules it, the others join it.
  const soon = () => {
    if (pending) return;
    pending = setTimeout(() => {
      pending = null;
      refresh().catch(showError);
    }, 200);
  };
  follow(
    first.program,
    abortion.signal,
    (item) => {
      if (item.type === "ready" || item.type === "reset") soon();
      else if (item.environment === first.environment) soon();
    },
    (state) => {
      liveState.textContent = state;
    },
  );
}

// ---- Audit -------------------------------------------------------------------------------------

async function auditView(params) {
  const inputs = ["principal", "program", "action"].map((name) =>
    el("input", { name, placeholder: name, value: params.get(name) || "" }),
  );
  const form = el(
    "form",
    {
      id: "audit-filter",
      onsubmit: (event) => {
        event.preventDefault();
        location.hash = `#/audit${query(Object.fromEntries(inputs.map((i) => [i.name, i.value.trim()])))}`;
      },
    },
    inputs,
    el("button", { type: "submit" }, "Filter"),
  );
  const found = await api(
    `/api/dashboard/audit${query({ principal: params.get("principal"), program: params.get("program"), action: params.get("action") })}`,
  );
  show(
    el("h1", {}, "Audit log"),
    form,
    table(
      ["Time", "Principal", "Action", "Resource", "Outcome", "Message"],
      found.audit_events.map((e) => [
        when(e.time),
        short(e.principal),
        short(e.method),
        e.resource,
        enumName(e.outcome, "AUDIT_OUTCOME_"),
        e.message,
      ]),
      { id: "audit" },
    ),
  );
}

// ---- Routing -----------------------------------------------------------------------------------

function showError(error) {
  if (error instanceof Superseded) return;
  if (error instanceof ApiError && error.status === 401) {
    signOut();
    return;
  }
  main.append(notice(error.message));
}

async function route() {
  generation += 1;
  for (const stop of leaving) stop();
  leaving = [];
  if (!session) {
    const saved = sessionStorage.getItem(TOKEN_KEY);
    if (!saved) return signInView();
    try {
      await signIn(saved);
    } catch (error) {
      if (error instanceof Superseded) return;
      return signInView(`Not signed in: ${error.message}`);
    }
  }
  const [path, search = ""] = location.hash.replace(/^#/, "").split("?");
  const params = new URLSearchParams(search);
  const parts = path.split("/").filter(Boolean).map(decodeURIComponent);
  try {
    if (parts[0] === "programs" && parts.length === 2) await programView(parts[1]);
    else if (parts[0] === "programs" && parts[2] === "versions" && parts.length === 4) await versionView(parts[1], parts[3]);
    else if (parts[0] === "programs" && parts[2] === "compare") await compareView(parts[1], params);
    else if (parts[0] === "deployments" && parts.length === 2) await deploymentView(parts[1]);
    else if (parts[0] === "deployments") await deploymentsView(params);
    else if (parts[0] === "audit") await auditView(params);
    else await programsView(params);
  } catch (error) {
    showError(error);
  }
}

document.getElementById("sign-out").addEventListener("click", signOut);
window.addEventListener("hashchange", route);
route();
