//! Deploy files: Prometheus alert rules (checked and unit-tested by promtool)
//! and the Grafana dashboard.
//!
//! The rules and the dashboard may name only metric families documented in
//! `docs/metrics.md`, so renaming a metric without updating `deploy/` fails here.
//! The real tools do the checking: `promtool` (package `prometheus`, installed by
//! `scripts/test.sh`) and `python3 -m json.tool`. A missing tool fails the test.

use std::collections::{BTreeMap, BTreeSet};
use std::io::ErrorKind;
use std::process::{Command, Output};

use crate::cli::repo_root;

const ALERTS: &str = "deploy/prometheus/alerts.yml";
const ALERTS_TEST: &str = "deploy/prometheus/alerts_test.yml";
const SLO: &str = "deploy/prometheus/slo.yml";
const SLO_TEST: &str = "deploy/prometheus/slo_test.yml";
const DASHBOARD: &str = "deploy/grafana/weir-dashboard.json";
const METRICS_DOC: &str = "docs/metrics.md";

/// The alerts the rules file must define (see deploy/README.md).
const EXPECTED_ALERTS: [&str; 12] = [
    "WeirBackendDown",
    "WeirPoolNoServingBackend",
    "WeirPoolFailoverTierActive",
    "WeirListenerRejectionsRising",
    "WeirBackendConnectErrors",
    "WeirListenerNearMaxConnections",
    "WeirConfigReloadFailed",
    "WeirCertificateExpiresSoon",
    "WeirFirewallRefusalSurge",
    "WeirAuthCircuitBreakerOpen",
    "WeirAuthFailuresRising",
    "WeirTracingSpansDropped",
];

/// The burn-rate alerts of the SLO rules (see deploy/README.md).
const SLO_ALERTS: [&str; 4] = [
    "WeirRouteErrorBudgetBurn",
    "WeirRouteErrorBudgetBurnSlow",
    "WeirListenerErrorBudgetBurn",
    "WeirListenerErrorBudgetBurnSlow",
];

/// Each rules file, its promtool tests, and the alerts it must define.
const RULE_FILES: [(&str, &str, &[&str]); 2] = [
    (ALERTS, ALERTS_TEST, &EXPECTED_ALERTS),
    (SLO, SLO_TEST, &SLO_ALERTS),
];

fn read(rel: &str) -> String {
    let path = repo_root().join(rel);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()))
}

/// Runs a real tool from the repository root; a tool that is not installed fails
/// the test with `install` as the way to get it.
fn run(program: &str, args: &[&str], install: &str) -> Output {
    match Command::new(program)
        .args(args)
        .current_dir(repo_root())
        .output()
    {
        Ok(out) => out,
        Err(e) if e.kind() == ErrorKind::NotFound => {
            panic!("`{program}` is not installed (not on PATH): {install}")
        }
        Err(e) => panic!("run {program}: {e}"),
    }
}

fn promtool(args: &[&str]) -> Output {
    run(
        "promtool",
        args,
        "scripts/test.sh installs the `prometheus` package that provides it (CI installs \
         it); install it with `apt-get install prometheus` or run scripts/test.sh",
    )
}

fn assert_success(what: &str, out: &Output) {
    assert!(
        out.status.success(),
        "{what} failed ({}):\n--- stdout\n{}\n--- stderr\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
}

#[test]
fn promtool_checks_the_alert_rules() {
    let out = promtool(&["check", "rules", ALERTS]);
    assert_success(&format!("promtool check rules {ALERTS}"), &out);
    let stdout = String::from_utf8_lossy(&out.stdout);
    let want = format!("SUCCESS: {} rules found", EXPECTED_ALERTS.len());
    assert!(stdout.contains(&want), "expected {want:?} in:\n{stdout}");

    // The SLO file: its alerts plus a recording rule per window, SLO and scope.
    let out = promtool(&["check", "rules", SLO]);
    assert_success(&format!("promtool check rules {SLO}"), &out);
    let stdout = String::from_utf8_lossy(&out.stdout);
    let records = read(SLO).matches("- record: ").count();
    let want = format!("SUCCESS: {} rules found", records + SLO_ALERTS.len());
    assert!(stdout.contains(&want), "expected {want:?} in:\n{stdout}");
}

#[test]
fn promtool_unit_tests_of_the_alert_rules_pass() {
    for (_, tests, _) in RULE_FILES {
        // rule_files in the test file is relative to the test file itself.
        let out = promtool(&["test", "rules", tests]);
        assert_success(&format!("promtool test rules {tests}"), &out);
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(stdout.contains("SUCCESS"), "no SUCCESS in:\n{stdout}");
    }
}

/// One `- alert:` block of the rules file, as lines.
fn alert_blocks(rules: &str) -> BTreeMap<String, String> {
    let mut blocks = BTreeMap::new();
    let mut current: Option<(String, String)> = None;
    for line in rules.lines() {
        if let Some(name) = line.trim().strip_prefix("- alert:") {
            if let Some((name, block)) = current.take() {
                assert!(blocks.insert(name.clone(), block).is_none(), "{name} twice");
            }
            current = Some((name.trim().to_string(), String::new()));
        } else if let Some((_, block)) = current.as_mut() {
            block.push_str(line);
            block.push('\n');
        }
    }
    if let Some((name, block)) = current {
        assert!(blocks.insert(name.clone(), block).is_none(), "{name} twice");
    }
    blocks
}

#[test]
fn every_alert_is_complete_and_tested_both_ways() {
    assert!(
        read(ALERTS).contains("- name: weir\n"),
        "no rule group `weir`"
    );
    for (rules, tests, expected) in RULE_FILES {
        alerts_complete_and_tested(rules, tests, expected);
    }
}

fn alerts_complete_and_tested(rules: &str, tests: &str, expected: &[&str]) {
    let rules = read(rules);
    let blocks = alert_blocks(&rules);
    let names: BTreeSet<&str> = blocks.keys().map(String::as_str).collect();
    assert_eq!(names, expected.iter().copied().collect::<BTreeSet<_>>());
    for (name, block) in &blocks {
        for key in ["expr:", "for:", "severity:", "summary:", "description:"] {
            assert!(
                block.lines().any(|l| l.trim_start().starts_with(key)),
                "{name}: no `{key}`"
            );
        }
        assert!(
            block.contains("{{ $labels."),
            "{name}: annotations use no labels"
        );
        assert!(
            block.contains("severity: warning") || block.contains("severity: critical"),
            "{name}: severity is neither warning nor critical"
        );
    }

    // In the promtool tests, every alert needs a case where it fires (a non-empty
    // exp_alerts) and one where it must not (exp_alerts: []).
    let tests = read(tests);
    let mut fires = BTreeSet::new();
    let mut silent = BTreeSet::new();
    let mut lines = tests.lines().map(str::trim).filter(|l| !l.is_empty());
    while let Some(line) = lines.next() {
        let Some(name) = line.strip_prefix("alertname:") else {
            continue;
        };
        let name = name.trim().to_string();
        match lines.next() {
            Some("exp_alerts: []") => silent.insert(name),
            Some("exp_alerts:") => fires.insert(name),
            other => panic!("alertname {name} is followed by {other:?}, not exp_alerts"),
        };
    }
    for &name in expected {
        assert!(fires.contains(name), "no promtool case where {name} fires");
        assert!(
            silent.contains(name),
            "no promtool case where {name} is silent"
        );
    }
    for name in fires.iter().chain(&silent) {
        assert!(
            names.contains(name.as_str()),
            "tests name unknown alert {name}"
        );
    }
}

#[test]
fn dashboard_is_valid_json_with_a_sound_layout() {
    let out = run(
        "python3",
        &["-m", "json.tool", DASHBOARD],
        "python3 checks the dashboard's JSON; install python3",
    );
    assert_success(&format!("python3 -m json.tool {DASHBOARD}"), &out);

    let dash = Json::parse(&read(DASHBOARD));
    assert!(dash.get("uid").and_then(Json::as_str).is_some(), "no uid");
    assert!(
        dash.get("title").and_then(Json::as_str).is_some(),
        "no title"
    );
    let schema = dash.get("schemaVersion").and_then(Json::as_f64);
    assert!(
        schema.is_some_and(|v| (36.0..=41.0).contains(&v)),
        "schemaVersion {schema:?}"
    );

    // Variables: a Prometheus data source, and pool and listener from label_values.
    let vars = dash
        .get("templating")
        .and_then(|t| t.get("list"))
        .and_then(Json::as_arr)
        .expect("templating.list");
    let var = |name: &str| {
        vars.iter()
            .find(|v| v.get("name").and_then(Json::as_str) == Some(name))
            .unwrap_or_else(|| panic!("no variable {name}"))
    };
    let ds = var("datasource");
    assert_eq!(ds.get("type").and_then(Json::as_str), Some("datasource"));
    assert_eq!(ds.get("query").and_then(Json::as_str), Some("prometheus"));
    for (name, label) in [("pool", "pool"), ("listener", "listener")] {
        let v = var(name);
        assert_eq!(v.get("type").and_then(Json::as_str), Some("query"));
        let def = v.get("definition").and_then(Json::as_str).unwrap_or("");
        assert!(
            def.starts_with("label_values(weir_") && def.ends_with(&format!(", {label})")),
            "variable {name}: definition {def:?}"
        );
        assert_uses_datasource_variable(&format!("variable {name}"), v);
    }

    // Panels: unique ids, on the 24-column grid, not overlapping; rows and the four
    // subjects the dashboard is for; every query on the ${datasource} variable.
    let panels = dash.get("panels").and_then(Json::as_arr).expect("panels");
    let mut ids = BTreeSet::new();
    let mut cells = BTreeMap::new();
    let mut rows = Vec::new();
    let mut queries = 0;
    for p in panels {
        let id = p.get("id").and_then(Json::as_f64).expect("panel id");
        let title = p.get("title").and_then(Json::as_str).expect("panel title");
        assert!(ids.insert(id as i64), "panel id {id} twice");
        let g = p.get("gridPos").expect("gridPos");
        let n = |k: &str| {
            g.get(k)
                .and_then(Json::as_f64)
                .unwrap_or_else(|| panic!("{title}: gridPos.{k}")) as i64
        };
        let (x, y, w, h) = (n("x"), n("y"), n("w"), n("h"));
        assert!(
            x >= 0 && y >= 0 && w > 0 && h > 0 && x + w <= 24,
            "{title}: {x} {y} {w} {h}"
        );
        for cx in x..x + w {
            for cy in y..y + h {
                if let Some(other) = cells.insert((cx, cy), title) {
                    panic!("panels {other:?} and {title:?} overlap at ({cx}, {cy})");
                }
            }
        }
        if p.get("type").and_then(Json::as_str) == Some("row") {
            rows.push(title.to_string());
            continue;
        }
        assert_uses_datasource_variable(title, p);
        let targets = p.get("targets").and_then(Json::as_arr).unwrap_or(&[]);
        assert!(!targets.is_empty(), "{title}: no queries");
        for t in targets {
            assert_uses_datasource_variable(title, t);
            let expr = t.get("expr").and_then(Json::as_str).unwrap_or("");
            assert!(!expr.trim().is_empty(), "{title}: empty expr");
            queries += 1;
        }
    }
    for want in ["Traffic", "Backend health", "Latency", "Rejections"] {
        assert!(
            rows.iter().any(|r| r.contains(want)),
            "no row about {want}: {rows:?}"
        );
    }
    let exprs = dashboard_exprs(&dash);
    assert_eq!(exprs.len(), queries);
    for family in [
        "weir_connection_duration_seconds_bucket",
        "weir_backend_connect_duration_seconds_bucket",
        "weir_health_check_duration_seconds_bucket",
    ] {
        assert!(
            exprs
                .iter()
                .any(|e| e.contains("histogram_quantile(0.99") && e.contains(family)),
            "no p99 over {family}"
        );
    }
}

fn assert_uses_datasource_variable(what: &str, v: &Json) {
    let ds = v
        .get("datasource")
        .unwrap_or_else(|| panic!("{what}: no datasource"));
    assert_eq!(
        ds.get("uid").and_then(Json::as_str),
        Some("${datasource}"),
        "{what}: datasource is not the ${{datasource}} variable"
    );
}

/// Every `expr` of every panel target, in order.
fn dashboard_exprs(dash: &Json) -> Vec<String> {
    let mut exprs = Vec::new();
    for p in dash.get("panels").and_then(Json::as_arr).unwrap_or(&[]) {
        for t in p.get("targets").and_then(Json::as_arr).unwrap_or(&[]) {
            if let Some(e) = t.get("expr").and_then(Json::as_str) {
                exprs.push(e.to_string());
            }
        }
    }
    exprs
}

#[test]
fn dashboard_queries_parse_as_promql() {
    let dash = Json::parse(&read(DASHBOARD));
    let exprs = dashboard_exprs(&dash);
    assert!(!exprs.is_empty(), "no queries in the dashboard");
    let vars: Vec<String> = dash
        .get("templating")
        .and_then(|t| t.get("list"))
        .and_then(Json::as_arr)
        .unwrap_or(&[])
        .iter()
        .filter_map(|v| v.get("name").and_then(Json::as_str).map(str::to_string))
        .collect();
    // promtool parses rule expressions: give it every query as a recording rule,
    // with Grafana's variables replaced by what Grafana would put there.
    let mut rules = String::from("groups:\n  - name: weir-dashboard\n    rules:\n");
    for (i, expr) in exprs.iter().enumerate() {
        let mut e = expr
            .replace("$__rate_interval", "5m")
            .replace("$__interval", "1m")
            .replace("$__range", "1h");
        for v in &vars {
            e = e
                .replace(&format!("${{{v}}}"), ".*")
                .replace(&format!("${v}"), ".*");
        }
        assert!(!e.contains('$'), "unknown variable in {expr:?}");
        rules.push_str(&format!(
            "      - record: weir_dashboard:query{i}\n        expr: {}\n",
            json_string(&e)
        ));
    }
    let dir = crate::cli::Scratch::new(format!("weir-deploy-{}", std::process::id()));
    let file = dir.join("dashboard-queries.yml");
    std::fs::write(&file, &rules).expect("write rules");
    let out = promtool(&["check", "rules", file.to_str().expect("utf-8 path")]);
    assert_success("promtool check rules on the dashboard's queries", &out);
}

/// Families documented in docs/metrics.md: name -> type.
pub(crate) fn documented_families() -> BTreeMap<String, String> {
    let mut families = BTreeMap::new();
    for line in read(METRICS_DOC).lines() {
        let cells: Vec<&str> = line.split('|').map(str::trim).collect();
        // "| `weir_x` | type | labels | meaning |" splits into ["", name, type, ...].
        if cells.len() < 4 || !cells[1].starts_with("`weir_") {
            continue;
        }
        for name in cells[1].split('`').filter(|s| s.starts_with("weir_")) {
            families.insert(name.to_string(), cells[2].to_string());
        }
    }
    families
}

/// Every token that starts with `weir_` (a whole word: not inside another name).
fn weir_names(text: &str) -> BTreeSet<String> {
    let is_name = |c: char| c.is_ascii_alphanumeric() || c == '_';
    let mut names = BTreeSet::new();
    for (at, _) in text.match_indices("weir_") {
        if text[..at].chars().next_back().is_some_and(is_name) {
            continue;
        }
        let end = text[at..]
            .find(|c| !is_name(c))
            .map_or(text.len(), |n| at + n);
        names.insert(text[at..end].to_string());
    }
    names
}

/// The documented family a name refers to: the name itself, or the histogram a
/// `_bucket`, `_sum` or `_count` series belongs to.
fn family_of<'a>(name: &'a str, families: &BTreeMap<String, String>) -> Option<&'a str> {
    if families.contains_key(name) {
        return Some(name);
    }
    ["_bucket", "_sum", "_count"]
        .into_iter()
        .find_map(|suffix| {
            let base = name.strip_suffix(suffix)?;
            (families.get(base).map(String::as_str) == Some("histogram")).then_some(base)
        })
}

#[test]
fn every_metric_named_in_deploy_is_documented() {
    let families = documented_families();
    assert!(
        families.len() >= 20 && families.contains_key("weir_backend_state"),
        "could not read the families of {METRICS_DOC}: {families:?}"
    );

    // Alerts: every expression names a weir metric; the whole file (expressions and
    // the queries in annotations) names only documented ones.
    let rules = read(ALERTS);
    for (name, block) in alert_blocks(&rules) {
        let expr: String = block
            .lines()
            .skip_while(|l| !l.trim_start().starts_with("expr:"))
            .take_while(|l| !l.trim_start().starts_with("for:"))
            .collect();
        assert!(
            !weir_names(&expr).is_empty(),
            "{name}: no weir metric in {expr:?}"
        );
    }
    // Dashboard: every string of the JSON (queries, variable definitions, texts).
    let dash = Json::parse(&read(DASHBOARD));
    let mut strings = Vec::new();
    dash.strings(&mut strings);
    for expr in dashboard_exprs(&dash) {
        assert!(
            !weir_names(&expr).is_empty()
                || !recorded_names(&expr).is_empty()
                || expr.contains("process_"),
            "dashboard query names no weir metric: {expr:?}"
        );
    }

    let mut used = BTreeSet::new();
    let mut undocumented = Vec::new();
    let sources = [
        (ALERTS, rules),
        (SLO, read(SLO)),
        (DASHBOARD, strings.join("\n")),
    ];
    for (file, text) in &sources {
        for name in weir_names(text) {
            match family_of(&name, &families) {
                Some(family) => {
                    used.insert(family.to_string());
                }
                None => undocumented.push(format!("{file}: {name}")),
            }
        }
    }
    assert!(
        undocumented.is_empty(),
        "metrics not documented in {METRICS_DOC} (renamed?):\n  {}",
        undocumented.join("\n  ")
    );
    // Not vacuous: the files use the families they are about.
    for family in [
        "weir_backend_state",
        "weir_pool_active_tier",
        "weir_listener_connections_rejected_total",
        "weir_backend_connect_errors_total",
        "weir_listener_connections_active",
        "weir_listener_max_connections",
        "weir_config_last_reload_successful",
        "weir_connection_duration_seconds",
        "weir_backend_connect_duration_seconds",
        "weir_health_check_duration_seconds",
        "weir_health_checks_total",
        "weir_backend_sent_bytes_total",
        "weir_backend_received_bytes_total",
        "weir_pool_backends",
        "weir_backend_transitions_total",
    ] {
        assert!(used.contains(family), "{family} is not used in deploy/");
    }
}

/// Every `weir:` recording-rule name (`weir:what:how`) in `text`.
fn recorded_names(text: &str) -> BTreeSet<String> {
    let is_name = |c: char| c.is_ascii_alphanumeric() || c == '_' || c == ':';
    text.match_indices("weir:")
        .filter(|(at, _)| !text[..*at].chars().next_back().is_some_and(is_name))
        .map(|(at, _)| {
            let end = text[at..]
                .find(|c| !is_name(c))
                .map_or(text.len(), |n| at + n);
            text[at..end].to_string()
        })
        .filter(|name| name.matches(':').count() == 2)
        .collect()
}

#[test]
fn every_recorded_series_used_is_recorded() {
    let slo = read(SLO);
    let recorded: BTreeSet<String> = slo
        .lines()
        .filter_map(|l| l.trim().strip_prefix("- record: "))
        .map(str::to_string)
        .collect();
    // Seven windows for each scope, the 30-day window, the budget left, the budgets.
    for scope in ["route", "listener"] {
        for w in ["5m", "30m", "1h", "2h", "6h", "1d", "3d", "30d"] {
            let name = format!("weir:{scope}_slo_errors:ratio_rate{w}");
            assert!(recorded.contains(&name), "{SLO} does not record {name}");
        }
        let name = format!("weir:{scope}_slo_error_budget_remaining:ratio");
        assert!(recorded.contains(&name), "{SLO} does not record {name}");
    }
    let dash = Json::parse(&read(DASHBOARD));
    let used_in_dashboard = recorded_names(&dashboard_exprs(&dash).join("\n"));
    assert!(
        used_in_dashboard.contains("weir:route_slo_error_budget_remaining:ratio"),
        "the dashboard has no SLO row"
    );
    for (file, text) in [(SLO, slo), (DASHBOARD, dashboard_exprs(&dash).join("\n"))] {
        for name in recorded_names(&text) {
            assert!(
                recorded.contains(&name),
                "{file} uses {name}, which {SLO} does not record"
            );
        }
    }
}

#[test]
fn the_name_check_catches_a_renamed_metric() {
    let families = documented_families();
    let names = weir_names(
        r#"rate(weir_backend_connect_errors_total[5m]) + weir_listener_conns_total
           histogram_quantile(0.9, weir_health_check_duration_seconds_bucket)
           weir_backend_healthy_count x_weir_not_a_name"#,
    );
    let undocumented: Vec<&String> = names
        .iter()
        .filter(|n| family_of(n, &families).is_none())
        .collect();
    // A gauge has no _count series; only histograms have the suffixes.
    assert_eq!(
        undocumented,
        ["weir_backend_healthy_count", "weir_listener_conns_total"]
    );
    assert_eq!(names.len(), 4, "{names:?}");
}

/// A JSON string literal (also a valid YAML double-quoted scalar).
fn json_string(s: &str) -> String {
    let mut out = String::from("\"");
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\t' => out.push_str("\\t"),
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// A minimal JSON reader (the test binary has no JSON crate): enough to walk the
/// dashboard. Its validity is checked by `python3 -m json.tool`; this reader panics
/// on what it cannot read.
#[derive(Debug)]
enum Json {
    Null,
    Bool(#[allow(dead_code)] bool),
    Num(f64),
    Str(String),
    Arr(Vec<Json>),
    Obj(Vec<(String, Json)>),
}

impl Json {
    fn parse(text: &str) -> Json {
        let mut r = Reader {
            s: text.as_bytes(),
            i: 0,
        };
        let v = r.value();
        r.ws();
        assert_eq!(r.i, r.s.len(), "trailing characters after the JSON value");
        v
    }

    fn get(&self, key: &str) -> Option<&Json> {
        match self {
            Json::Obj(fields) => fields.iter().find(|(k, _)| k == key).map(|(_, v)| v),
            _ => None,
        }
    }

    fn as_str(&self) -> Option<&str> {
        match self {
            Json::Str(s) => Some(s),
            _ => None,
        }
    }

    fn as_f64(&self) -> Option<f64> {
        match self {
            Json::Num(n) => Some(*n),
            _ => None,
        }
    }

    fn as_arr(&self) -> Option<&[Json]> {
        match self {
            Json::Arr(a) => Some(a),
            _ => None,
        }
    }

    /// Every string value (not keys), depth first.
    fn strings<'a>(&'a self, out: &mut Vec<&'a str>) {
        match self {
            Json::Str(s) => out.push(s),
            Json::Arr(a) => a.iter().for_each(|v| v.strings(out)),
            Json::Obj(o) => o.iter().for_each(|(_, v)| v.strings(out)),
            Json::Null | Json::Bool(_) | Json::Num(_) => {}
        }
    }
}

struct Reader<'a> {
    s: &'a [u8],
    i: usize,
}

impl Reader<'_> {
    fn ws(&mut self) {
        while self.i < self.s.len() && matches!(self.s[self.i], b' ' | b'\t' | b'\n' | b'\r') {
            self.i += 1;
        }
    }

    fn peek(&self) -> u8 {
        *self
            .s
            .get(self.i)
            .unwrap_or_else(|| panic!("JSON ends early"))
    }

    fn expect(&mut self, lit: &str) {
        assert!(
            self.s[self.i..].starts_with(lit.as_bytes()),
            "JSON: expected {lit:?} at byte {}",
            self.i
        );
        self.i += lit.len();
    }

    fn value(&mut self) -> Json {
        self.ws();
        match self.peek() {
            b'{' => {
                self.i += 1;
                let mut fields = Vec::new();
                self.ws();
                if self.peek() == b'}' {
                    self.i += 1;
                    return Json::Obj(fields);
                }
                loop {
                    self.ws();
                    let key = self.string();
                    self.ws();
                    self.expect(":");
                    fields.push((key, self.value()));
                    self.ws();
                    match self.peek() {
                        b',' => self.i += 1,
                        b'}' => {
                            self.i += 1;
                            return Json::Obj(fields);
                        }
                        c => panic!("JSON: unexpected {:?} at byte {}", c as char, self.i),
                    }
                }
            }
            b'[' => {
                self.i += 1;
                let mut items = Vec::new();
                self.ws();
                if self.peek() == b']' {
                    self.i += 1;
                    return Json::Arr(items);
                }
                loop {
                    items.push(self.value());
                    self.ws();
                    match self.peek() {
                        b',' => self.i += 1,
                        b']' => {
                            self.i += 1;
                            return Json::Arr(items);
                        }
                        c => panic!("JSON: unexpected {:?} at byte {}", c as char, self.i),
                    }
                }
            }
            b'"' => Json::Str(self.string()),
            b't' => {
                self.expect("true");
                Json::Bool(true)
            }
            b'f' => {
                self.expect("false");
                Json::Bool(false)
            }
            b'n' => {
                self.expect("null");
                Json::Null
            }
            _ => {
                let start = self.i;
                while self.i < self.s.len()
                    && matches!(
                        self.s[self.i],
                        b'-' | b'+' | b'.' | b'e' | b'E' | b'0'..=b'9'
                    )
                {
                    self.i += 1;
                }
                let text = std::str::from_utf8(&self.s[start..self.i]).expect("ascii");
                Json::Num(
                    text.parse()
                        .unwrap_or_else(|_| panic!("JSON: bad number {text:?} at byte {start}")),
                )
            }
        }
    }

    fn hex4(&mut self) -> u32 {
        let text = std::str::from_utf8(&self.s[self.i..self.i + 4]).expect("ascii");
        self.i += 4;
        u32::from_str_radix(text, 16).unwrap_or_else(|_| panic!("JSON: bad \\u{text}"))
    }

    fn string(&mut self) -> String {
        self.expect("\"");
        let mut bytes = Vec::new();
        loop {
            let c = self.peek();
            self.i += 1;
            match c {
                b'"' => break,
                b'\\' => {
                    let e = self.peek();
                    self.i += 1;
                    let ch = match e {
                        b'"' => '"',
                        b'\\' => '\\',
                        b'/' => '/',
                        b'b' => '\u{8}',
                        b'f' => '\u{c}',
                        b'n' => '\n',
                        b'r' => '\r',
                        b't' => '\t',
                        b'u' => {
                            let mut code = self.hex4();
                            if (0xd800..0xdc00).contains(&code)
                                && self.s[self.i..].starts_with(b"\\u")
                            {
                                self.i += 2;
                                let low = self.hex4();
                                code = 0x10000
                                    + ((code - 0xd800) << 10)
                                    + (low.wrapping_sub(0xdc00) & 0x3ff);
                            }
                            char::from_u32(code).unwrap_or('\u{fffd}')
                        }
                        e => panic!("JSON: bad escape \\{}", e as char),
                    };
                    let mut buf = [0; 4];
                    bytes.extend_from_slice(ch.encode_utf8(&mut buf).as_bytes());
                }
                c => bytes.push(c),
            }
        }
        String::from_utf8(bytes).expect("JSON strings are UTF-8")
    }
}

#[test]
fn the_json_reader_reads_what_it_needs() {
    let v = Json::parse(r#" {"a": [1, -2.5e1, true, null, "x\"\u00e9\ud83d\ude00"], "b": {}} "#);
    let a = v.get("a").and_then(Json::as_arr).expect("a");
    assert_eq!(a[1].as_f64(), Some(-25.0));
    assert_eq!(a[4].as_str(), Some("x\"é😀"));
    assert!(
        v.get("b")
            .is_some_and(|b| matches!(b, Json::Obj(f) if f.is_empty()))
    );
    assert_eq!(json_string("a\"b\\c"), r#""a\"b\\c""#);
}

/// The shipped unit passes `systemd-analyze verify` without a warning (its
/// `/usr/bin/weir` pointed at the binary under test, which verify wants to
/// find), and says what the service needs: notify, a watchdog, a reload
/// that checks the file first, the hardening, and no capability but
/// binding low ports.
#[test]
fn the_systemd_unit_verifies_and_is_hardened() {
    let unit = read("deploy/systemd/weir.service");
    for line in [
        "Type=notify",
        "NotifyAccess=all",
        "WatchdogSec=30s",
        "ExecReload=/usr/bin/weir check --config /etc/weir/weir.toml",
        "ExecReload=/bin/kill -HUP $MAINPID",
        "NoNewPrivileges=true",
        "ProtectSystem=strict",
        "ReadWritePaths=/var/lib/weir",
        "AmbientCapabilities=CAP_NET_BIND_SERVICE",
        "CapabilityBoundingSet=CAP_NET_BIND_SERVICE",
        "LimitNOFILE=1048576",
    ] {
        assert!(
            unit.lines().any(|l| l == line),
            "the unit has no line {line:?}"
        );
    }
    let dir = crate::cli::Scratch::new(format!("weir-unit-{}", std::process::id()));
    let path = dir.join("weir.service");
    std::fs::write(
        &path,
        unit.replace("/usr/bin/weir", env!("CARGO_BIN_EXE_weir")),
    )
    .expect("write");
    // The example socket unit of socket activation, beside the service it
    // hands its socket to.
    let socket_unit = read("deploy/systemd/weir-web.socket");
    for line in ["FileDescriptorName=web", "Service=weir.service"] {
        assert!(
            socket_unit.lines().any(|l| l == line),
            "the socket unit has no line {line:?}"
        );
    }
    let socket_path = dir.join("weir-web.socket");
    std::fs::write(&socket_path, socket_unit).expect("write");
    let out = run(
        "systemd-analyze",
        &[
            "verify",
            &socket_path.to_string_lossy(),
            &path.to_string_lossy(),
        ],
        "scripts/test.sh installs the `systemd` package that provides it",
    );
    assert_success("systemd-analyze verify", &out);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.trim().is_empty(), "systemd-analyze warns:\n{stderr}");
}
