//! The pages, as `maud` templates: every value spliced in is HTML-escaped (a captured `<script>`
//! is shown as the text `<script>`), and no page carries a script of its own.

use maud::{html, Markup, DOCTYPE};

use super::format;
use crate::audit::{self, decode, AuditView, ContextSource, Protocol, StreamBody};
use crate::reads::{CaptureRead, ListPage, ListRequest, Row, MARKS};
use crate::record::{CaptureRecord, CapturedBody, Headers, Outcome};
use crate::store::CaptureSummary;

/// Most bytes of one body shown on a capture's page (the JSON record has all of them).
pub const MAX_SHOWN_BODY: usize = 512 * 1024;
/// Most events of one stream shown on a capture's page.
pub const MAX_SHOWN_EVENTS: usize = 2000;
/// The value the filter stores in place of a redacted header or query value.
const REDACTED: &str = "[REDACTED]";

/// Who is looking: whether a sign-out button belongs in the header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Viewer {
    /// No read token is set: the view is open to whoever reaches the collector.
    Open,
    /// Signed in with the read token.
    SignedIn,
    /// Not signed in (the sign-in page).
    Anonymous,
}

fn asset(name: &str) -> String {
    format!("/ui/assets/{}/{name}", super::ASSET_VERSION)
}

fn layout(title: &str, viewer: Viewer, body: Markup) -> Markup {
    html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                meta name="referrer" content="no-referrer";
                title { (title) " · TruthTable" }
                link rel="stylesheet" href=(asset("style.css"));
                link rel="icon" type="image/svg+xml" href=(asset("icon.svg"));
            }
            body {
                header.top {
                    a.brand href="/ui" { img src=(asset("icon.svg")) alt="" width="20" height="20"; " TruthTable" }
                    span.sub { "captures" }
                    span.spacer {}
                    @match viewer {
                        Viewer::SignedIn => {
                            form.signout method="post" action="/ui/logout" {
                                button type="submit" { "Sign out" }
                            }
                        }
                        Viewer::Open => {
                            span.open title="Set TRUTHTABLE_READ_TOKEN to require a sign-in" { "no read token set: open to anyone who reaches this port" }
                        }
                        Viewer::Anonymous => {}
                    }
                }
                main { (body) }
            }
        }
    }
}

/// The sign-in form. `next` is where to go afterwards (a local path).
pub fn sign_in(next: &str, error: Option<&str>) -> Markup {
    layout(
        "Sign in",
        Viewer::Anonymous,
        html! {
            section.signin {
                h1 { "Sign in" }
                p { "This collector's captures are read with its read token (" code { "TRUTHTABLE_READ_TOKEN" } ")." }
                @if let Some(e) = error { p.error role="alert" { (e) } }
                form #signin method="post" action="/ui/login" {
                    input type="hidden" name="next" value=(next);
                    label for="token" { "Read token" }
                    input #token type="password" name="token" autocomplete="current-password" required autofocus;
                    button type="submit" { "Sign in" }
                }
                p.note { "The token is sent once, in this form's body; the browser keeps a signed session cookie (HttpOnly, 12 hours), never the token." }
            }
        },
    )
}

/// A page that says what went wrong.
pub fn problem(title: &str, message: &str, viewer: Viewer) -> Markup {
    layout(
        title,
        viewer,
        html! {
            h1 { (title) }
            p.error role="alert" { (message) }
            p { a href="/ui" { "Back to the captures" } }
        },
    )
}

fn mark(kind: &str, text: &str, title: &str) -> Markup {
    html! { span class={"mark " (kind)} title=(title) { (text) } }
}

fn marks(s: &CaptureSummary) -> Markup {
    html! {
        @if s.body_truncated == Some(true) { (mark("truncated", "truncated", "a body was cut at max_body_bytes")) }
        @if s.stream_complete == Some(false) { (mark("incomplete", "incomplete", "the stream ended without its terminal event")) }
        @if let Some(n) = s.problems.filter(|n| *n > 0) {
            (mark("problems", &format!("{n} problem{}", if n == 1 { "" } else { "s" }), "the audit view reports problems"))
        }
        @if s.protocol.is_none() { (mark("pending", "indexing", "its digest is being derived")) }
    }
}

/// The list's verdict cell: flagged, the lowest score, or an engine error.
fn verdict_badge(s: &CaptureSummary) -> Markup {
    let score = s.lowest_score.map(|x| format!("{x:.2}"));
    html! {
        @match (s.flagged, s.verdict_count) {
            (_, 0) => span.none { "—" },
            (Some(true), _) => span.badge.bad title="an audit engine found a hallucination" { "flagged" @if let Some(x) = &score { " " (x) } },
            (Some(false), _) => span.badge.ok title="judged faithful by the audit engines" { "faithful" @if let Some(x) = &score { " " (x) } },
            (None, _) => span.badge.muted title="the audit engine's answer could not be used, or its audit failed" { "engine error" },
        }
    }
}

/// Where an evidence passage sits in the context the model saw: the first context item whose
/// text holds it.
fn evidence_source(view: &AuditView, evidence: &str) -> Option<(usize, String)> {
    let needle = evidence.trim();
    if needle.is_empty() {
        return None;
    }
    view.context.iter().enumerate().find_map(|(i, c)| {
        c.text.contains(needle).then(|| {
            let name = c.name.clone().unwrap_or_else(|| c.field.clone());
            (i, format!("{} {name}", source_name(c.source)))
        })
    })
}

/// The audit engines' verdicts, each claim with its evidence and where the context holds it.
fn verdicts_section(view: &AuditView, verdicts: &[crate::store::StoredVerdict]) -> Markup {
    let parsed: Vec<Result<crate::engine::Verdict, String>> = verdicts
        .iter()
        .map(|v| serde_json::from_str(&v.json).map_err(|e| e.to_string()))
        .collect();
    html! {
        section #verdicts.verdicts {
            h3 { "Verdicts" span.count { (parsed.len()) } }
            @if parsed.is_empty() { p.none { "no audit engine has judged this answer" } }
            @for v in &parsed {
                @match v {
                    Err(e) => p.error { "a stored verdict does not read: " (e) },
                    Ok(v) => {
                        article.verdict {
                            header {
                                @match (v.status, v.hallucination) {
                                    (crate::engine::verdict::VerdictStatus::Completed, Some(true)) => span.badge.bad { "hallucination" },
                                    (crate::engine::verdict::VerdictStatus::Completed, _) => span.badge.ok { "faithful" },
                                    (crate::engine::verdict::VerdictStatus::Failed, _) => span.badge.warn { "audit failed" },
                                    (crate::engine::verdict::VerdictStatus::Error, _) => span.badge.muted { "engine error" },
                                    (crate::engine::verdict::VerdictStatus::Pending, _) => span.badge.muted { "verdict to come" },
                                }
                                @if let Some(score) = v.score { " score " strong.score { (format!("{score:.2}")) } }
                                @if let Some(g) = &v.grade { " grade " strong.grade { (g) } }
                                " · " code.engine { (v.engine) } " · " span.received { (v.received_at) }
                                @if !v.answer_complete { " " (mark("incomplete", "answer incomplete", "the answer was cut off when it was handed over")) }
                            }
                            @if let Some(e) = &v.error { p.warn { (e) } }
                            @if let Some(r) = &v.reasoning { p.reasoning { (r) } }
                            @if !v.claims.is_empty() {
                                table.claims {
                                    thead { tr { th { "Claim" } th { "Status" } th { "Confidence" } th { "Evidence from the context" } } }
                                    tbody {
                                        @for c in &v.claims {
                                            tr class={"claim " (c.status)} {
                                                td.claim-text { (c.claim) }
                                                td.claim-status { (c.status) }
                                                td.claim-confidence { (format!("{:.2}", c.confidence)) }
                                                td.evidence {
                                                    @for e in &c.evidence {
                                                        blockquote.evidence-item {
                                                            (e)
                                                            @if let Some((i, from)) = evidence_source(view, e) {
                                                                " " a.from href={"#context-" (i)} { "— " (from) }
                                                            }
                                                        }
                                                    }
                                                }
                                            }
                                        }
                                    }
                                }
                            }
                        }
                    }
                }
            }
        }
    }
}

fn outcome_badge(outcome: &str) -> Markup {
    let class = match outcome {
        "complete" => "ok",
        "client_aborted" => "warn",
        _ => "bad",
    };
    html! { span class={"badge " (class)} { (outcome) } }
}

fn status_badge(status: Option<u16>) -> Markup {
    match status {
        None => html! { span.badge.muted title="no response" { "—" } },
        Some(s) => {
            let class = match s {
                200..=299 => "ok",
                400..=499 => "warn",
                500..=599 => "bad",
                _ => "muted",
            };
            html! { span class={"badge " (class)} { (s) } }
        }
    }
}

fn capture_href(id: &str) -> String {
    format!("/ui/captures/{}", format::segment(id))
}

fn select(name: &str, label: &str, current: Option<&str>, options: &[&str], any: &str) -> Markup {
    let known = current.is_none_or(|c| options.contains(&c));
    html! {
        label { (label)
            select name=(name) {
                option value="" selected[current.is_none()] { (any) }
                @for o in options { option value=(o) selected[current == Some(*o)] { (o) } }
                @if !known { @if let Some(c) = current { option value=(c) selected { (c) } } }
            }
        }
    }
}

fn pager_href(req: &ListRequest, cursor: Option<(&str, &str)>) -> String {
    let mut pairs: Vec<(&str, String)> = req
        .filters
        .iter()
        .map(|(k, v)| (k.as_str(), v.clone()))
        .collect();
    if let Some((k, at)) = cursor {
        pairs.push((k, at.to_owned()));
    }
    let qs = format::query_string(pairs.iter().map(|(k, v)| (*k, v.as_str())));
    if qs.is_empty() {
        "/ui".to_owned()
    } else {
        format!("/ui?{qs}")
    }
}

/// The list: the filter form, one row per capture, and the pager.
pub fn list(
    req: &ListRequest,
    page: Option<&ListPage>,
    models: &[String],
    error: Option<&str>,
    viewer: Viewer,
) -> Markup {
    let value = |k: &str| req.filter_value(k).unwrap_or_default().to_owned();
    let marked = |m: &str| {
        req.filters
            .iter()
            .any(|(k, v)| k == "mark" && v.split(',').any(|x| x.trim() == m))
    };
    let outcomes = Outcome::ALL.map(Outcome::as_str);
    let protocols = Protocol::ALL.map(Protocol::as_str);
    let limits = ["25", "100", "200", "500"];
    html! {
        (layout("Captures", viewer, html! {
            form #filters.filters method="get" action="/ui" {
                label.wide { "Search question and answer"
                    input #q type="search" name="q" value=(value("q")) placeholder="words, or the start of words";
                }
                label { "From (UTC)" input #since type="text" name="since" value=(value("since")) placeholder="2026-11-25T16:10"; }
                label { "Until (UTC)" input #until type="text" name="until" value=(value("until")) placeholder="2026-11-25"; }
                (select("outcome", "Outcome", req.filter_value("outcome"), &outcomes, "any"))
                (select("protocol", "Protocol", req.filter_value("protocol"), &protocols, "any"))
                label { "Model"
                    input #model type="text" name="model" list="models" value=(value("model")) placeholder="exact name";
                    datalist #models { @for m in models { option value=(m) {} } }
                }
                label { "Path" input #path type="text" name="path" value=(value("path")) placeholder="/v1/chat/completions"; }
                label { "Status" input #status type="text" name="status" value=(value("status")) placeholder="200, 4xx, none" size="8"; }
                label { "TTFT over (ms)" input #ttft_above type="text" name="ttft_above" value=(value("ttft_above")) placeholder="2000" size="8"; }
                (select("sort", "Order", req.filter_value("sort"), &["ttft", "duration"], "newest"))
                fieldset.marks {
                    legend { "Only" }
                    @for m in MARKS {
                        label.check { input type="checkbox" name="mark" value=(m) checked[marked(m)]; " " (m) }
                    }
                }
                (select("verdict", "Verdict", req.filter_value("verdict"), &["flagged"], "any"))
                label { "Score below" input #score_below type="text" name="score_below" value=(value("score_below")) placeholder="0.5" size="5"; }
                (select("erased", "Erased", req.filter_value("erased"), &["show"], "hide"))
                (select("limit", "Per page", req.filter_value("limit"), &limits, "50"))
                div.actions {
                    button #apply type="submit" { "Apply" }
                    a href="/ui" { "Clear" }
                }
            }
            @if let Some(e) = error { p.error role="alert" { (e) } }
            @if let Some(page) = page {
                @if page.indexing {
                    p.notice role="status" { "Stored captures are still being indexed: filters and search skip those not reached yet." }
                }
                @if page.rows.is_empty() {
                    p.empty { @if req.query.filter.is_empty() { "No captures stored yet." } @else { "No capture matches these filters." } }
                } @else {
                    table #captures.captures {
                        thead { tr {
                            th { "Time (UTC)" } th { "Request" } th { "Status" } th { "Outcome" }
                            th { "Protocol · model" } th { "Question" } th { "Answer" } th { "Verdict" } th { "Marks" }
                        } }
                        tbody {
                            @for row in &page.rows {
                                @match row {
                                    Row::Erased(_, t) => {
                                        tr.erased data-id=(t.id) {
                                            td.time { a href=(capture_href(&t.id)) title=(t.started_at) { (format::short_time(&t.started_at)) } }
                                            td.tombstone colspan="8" {
                                                span.erased { "erased on " (t.erased_at) " (" (t.reason) ")" }
                                                " · " span.by { (t.by) }
                                                @if let Some(i) = t.log_index { " · log index " (i) }
                                            }
                                        }
                                    }
                                    Row::Capture(s) => {
                                        tr data-id=(s.id) {
                                            td.time { a href=(capture_href(&s.id)) title=(s.started_at) { (format::short_time(&s.started_at)) } }
                                            td.req { span.method { (s.method) } " " span.path title=(s.path) { (s.path) } }
                                            td { (status_badge(s.status)) }
                                            td { (outcome_badge(&s.outcome)) }
                                            td.proto {
                                                @if let Some(p) = &s.protocol { span.protocol { (p) } }
                                                @if let Some(m) = &s.model { br; span.model { (m) } }
                                            }
                                            td.q { a.question href=(capture_href(&s.id)) { @match &s.question { Some(q) => (q), None => span.none { "no question" } } } }
                                            td.a { @match &s.answer { Some(a) => span.answer { (a) }, None => span.none { "no answer" } } }
                                            td.verdict { (verdict_badge(s)) }
                                            td.marks { (marks(s)) }
                                        }
                                    }
                                }
                            }
                        }
                    }
                }
                nav.pager {
                    @if page.prev_after.is_some() || !matches!(req.query.page, crate::store::Page::Newest) || req.query.after_key.is_some() {
                        a #newest href=(pager_href(req, None)) { "⇤ Newest" }
                    }
                    @if let Some(after) = &page.prev_after { a #newer href=(pager_href(req, Some(("after", after)))) { "← Newer" } }
                    @if let Some(before) = &page.next_before { a #older href=(pager_href(req, Some(("before", before)))) { "Older →" } }
                }
            }
        }))
    }
}

fn text_block(text: Option<&str>, missing: &str) -> Markup {
    match text {
        Some(t) if !t.is_empty() => html! { div.text { (t) } },
        Some(_) => html! { p.none { "(empty)" } },
        None => html! { p.none { (missing) } },
    }
}

fn source_name(s: ContextSource) -> &'static str {
    match s {
        ContextSource::System => "system",
        ContextSource::Tool => "tool",
        ContextSource::Document => "document",
    }
}

fn json_or_text(text: &str) -> Markup {
    match format::reindent_json(text) {
        Some(pretty) => html! { pre.json { (pretty) } },
        None => html! { pre { (text) } },
    }
}

fn audit_columns(view: &AuditView, verdicts: &[crate::store::StoredVerdict]) -> Markup {
    html! {
        div.qca {
            section #question.pane {
                h2 { "Question" }
                (text_block(view.question.as_deref(), "no question found (see problems)"))
                @if let Some(f) = &view.fields.question { p.field { "from " code { (f) } } }
                @if !view.attachments.is_empty() {
                    h3 { "Attachments" }
                    ul.attachments { @for a in &view.attachments {
                        li { (a.kind) " " code { (a.field) }
                            @if let Some(m) = &a.mime_type { " · " (m) }
                            @if let Some(n) = a.size_bytes { " · " (format::bytes(n)) }
                        }
                    } }
                }
            }
            section #context.pane {
                h2 { "Context" span.count { (view.context.len()) } }
                @if view.context.is_empty() { p.none { "no system message, tool result or document" } }
                @for (i, c) in view.context.iter().enumerate() {
                    article.context-item id={"context-" (i)} {
                        header {
                            span class={"source " (source_name(c.source))} { (source_name(c.source)) }
                            @if let Some(n) = &c.name { " " span.name { (n) } }
                            " " code.field { (c.field) }
                        }
                        div.text { (c.text) }
                    }
                }
            }
            section #answer.pane {
                h2 { "Answer" }
                (text_block(view.answer.as_deref(), "no answer found (see problems)"))
                @if let Some(f) = &view.fields.answer { p.field { "from " code { (f) } } }
                @if !view.tool_calls.is_empty() {
                    h3 { "Tool calls" }
                    @for t in &view.tool_calls {
                        article.tool-call {
                            header { span.name { (t.name) } @if let Some(id) = &t.id { " " code { (id) } } }
                            (json_or_text(&t.arguments))
                        }
                    }
                }
                dl.facts {
                    dt { "Finish reason" } dd { @match &view.finish_reason { Some(f) => code { (f) }, None => span.none { "not given" } } }
                    dt { "Usage" } dd {
                        (view.usage.input_tokens.map_or("?".to_owned(), |n| n.to_string())) " in · "
                        (view.usage.output_tokens.map_or("?".to_owned(), |n| n.to_string())) " out"
                    }
                    dt { "Complete" } dd {
                        @if view.answer_complete { "yes" } @else { span.warn { "no" } }
                        @if let Some(fmt) = view.stream_format {
                            " · streamed (" (serde_json::to_value(fmt).ok().and_then(|v| v.as_str().map(str::to_owned)).unwrap_or_default()) ")"
                            @if view.stream_complete == Some(false) { " " (mark("incomplete", "no terminal event", "the stream ended without its terminal event")) }
                        }
                    }
                }
                (verdicts_section(view, verdicts))
                @if view.choices.len() > 1 {
                    h3 { "Other choices" }
                    @for c in view.choices.iter().skip(1) {
                        article.choice {
                            header { "choice " (c.index) @if let Some(f) = &c.finish_reason { " · " code { (f) } } }
                            (text_block(c.answer.as_deref(), "no text"))
                        }
                    }
                }
            }
        }
    }
}

/// Milliseconds with one decimal.
fn ms(v: f64) -> String {
    format!("{v:.1} ms")
}

/// How fast the answer came: the figures, and the stream's arrival drawn as an inline SVG
/// (presentation attributes only: the CSP allows no inline style and no script).
fn timing_section(t: &audit::timing::Timing) -> Markup {
    html! {
        section #timing.timing {
            h2 { "Timing" }
            dl.facts {
                dt { "First byte" } dd { @match t.first_byte_ms { Some(v) => (ms(v)), None => span.none { "not recorded" } } }
                dt { "Time to first token" } dd #ttft { @match t.ttft_ms { Some(v) => (ms(v)), None => span.none { "none (not streamed, or no chunk times)" } } }
                @if let Some(g) = &t.inter_token_ms {
                    dt { "Token gaps" } dd #gaps { "p50 " (ms(g.p50)) " · p95 " (ms(g.p95)) " · max " (ms(g.max)) }
                }
                @if let Some(r) = t.output_tokens_per_s {
                    dt { "Output rate" } dd { (format!("{r:.1}")) " tokens/s" }
                }
                @if !t.stalls.is_empty() {
                    dt { "Stalls" } dd #stalls {
                        ul { @for s in &t.stalls {
                            li.stall { (ms(s.gap_ms)) " at " (ms(s.at_ms)) ", after " (s.answer_chars) " characters: “…" (s.before) "”" }
                        } }
                    }
                }
            }
            @if !t.points.is_empty() { (timeline(t)) }
        }
    }
}

/// Characters of the answer over time: one step per content-bearing chunk, stalls shaded, the
/// first token marked.
fn timeline(t: &audit::timing::Timing) -> Markup {
    const W: f64 = 640.0;
    const H: f64 = 140.0;
    const PAD: f64 = 28.0;
    let end_us = t.points.last().map_or(1, |p| p.0).max(1) as f64;
    let chars = t.points.last().map_or(1, |p| p.1).max(1) as f64;
    let x = |us: f64| PAD + (W - 2.0 * PAD) * us / end_us;
    let y = |c: f64| H - PAD - (H - 2.0 * PAD) * c / chars;
    let mut line = format!("{:.1},{:.1}", x(0.0), y(0.0));
    let mut before = 0usize;
    for &(at, c) in &t.points {
        line.push_str(&format!(
            " {:.1},{:.1} {:.1},{:.1}",
            x(at as f64),
            y(before as f64),
            x(at as f64),
            y(c as f64)
        ));
        before = c;
    }
    let label = format!(
        "{} characters over {}, {} stall(s)",
        before,
        ms(end_us / 1000.0),
        t.stalls.len()
    );
    html! {
        svg #timeline xmlns="http://www.w3.org/2000/svg" viewBox={"0 0 " (W) " " (H)} width=(W) height=(H) role="img" aria-label=(label) {
            title { "Answer arrival: " (label) }
            @for s in &t.stalls {
                rect.stall x=(format!("{:.1}", x(s.at_ms * 1000.0))) y=(PAD) width=(format!("{:.1}", x((s.at_ms + s.gap_ms) * 1000.0) - x(s.at_ms * 1000.0))) height=(H - 2.0 * PAD) fill="#f5c2c0" {
                    title { "stall: " (ms(s.gap_ms)) " at " (ms(s.at_ms)) }
                }
            }
            line x1=(PAD) y1=(H - PAD) x2=(W - PAD) y2=(H - PAD) stroke="#888" stroke-width="1" {}
            line x1=(PAD) y1=(PAD) x2=(PAD) y2=(H - PAD) stroke="#888" stroke-width="1" {}
            @if let Some(ttft) = t.ttft_ms {
                line.ttft x1=(format!("{:.1}", x(ttft * 1000.0))) y1=(PAD) x2=(format!("{:.1}", x(ttft * 1000.0))) y2=(H - PAD) stroke="#2a7" stroke-dasharray="4 3" {}
            }
            polyline.arrival points=(line) fill="none" stroke="#2456a6" stroke-width="2" {}
            text x=(PAD) y=(H - 8.0) font-size="11" fill="#555" { "0" }
            text x=(W - PAD) y=(H - 8.0) font-size="11" fill="#555" text-anchor="end" { (ms(end_us / 1000.0)) }
            text x=(PAD + 4.0) y=(PAD - 8.0) font-size="11" fill="#555" { (before) " chars" }
        }
    }
}

fn headers_table(headers: &Headers) -> Markup {
    html! {
        table.headers {
            @for (name, value) in headers {
                tr {
                    th { (name) }
                    td { @if value == REDACTED { span.redacted title="redacted by the filter: the value was never stored" { (REDACTED) } } @else { (value) } }
                }
            }
        }
    }
}

fn redacted_query(query: &str) -> Markup {
    html! {
        @for (i, part) in query.split('&').enumerate() {
            @if i > 0 { "&" }
            @match part.split_once('=') {
                Some((k, v)) if v == REDACTED => { (k) "=" span.redacted { (v) } }
                _ => { (part) }
            }
        }
    }
}

fn body_bytes(bytes: &[u8]) -> Markup {
    let shown = bytes.get(..MAX_SHOWN_BODY).unwrap_or(bytes);
    let more = bytes.len() - shown.len();
    html! {
        @match std::str::from_utf8(shown) {
            Ok(text) => (json_or_text(text)),
            Err(e) if e.valid_up_to() + 4 > shown.len() => {
                // A multi-byte character cut by the display limit.
                (json_or_text(std::str::from_utf8(shown.get(..e.valid_up_to()).unwrap_or_default()).unwrap_or_default()))
            }
            Err(_) => {
                p.note { (format::bytes(bytes.len() as u64)) " of binary data (not UTF-8); the first 4 KiB:" }
                pre.hex { (format::hex_dump(shown, 4096)) }
            }
        }
        @if more > 0 { p.note { "… " (format::bytes(more as u64)) " more not shown here: see the JSON record." } }
    }
}

fn stream_events(stream: &StreamBody) -> Markup {
    let total = stream.frames.len() + usize::from(stream.tail.is_some());
    let kind = match stream.format {
        audit::StreamFormat::Sse => "event",
        audit::StreamFormat::Ndjson => "line",
        audit::StreamFormat::JsonArray => "element",
    };
    html! {
        p.note { (total) " " (kind) "(s)"
            @if stream.format == audit::StreamFormat::JsonArray { @if stream.closed { ", array closed" } @else { ", array not closed" } }
            @if total > MAX_SHOWN_EVENTS { "; the first " (MAX_SHOWN_EVENTS) " are shown" }
        }
        ol.events {
            @for (frame, whole) in stream.all().take(MAX_SHOWN_EVENTS) {
                li.event.cut[!whole] {
                    @if !frame.event.is_empty() { span.event-name { "event: " (frame.event) } }
                    @if !whole { span.mark.incomplete { "cut off: the body ends inside it" } }
                    (json_or_text(&frame.data))
                }
            }
        }
    }
}

fn body_section(body: &CapturedBody, headers: &Headers, response: bool) -> Markup {
    let decoded = decode::decode_body(body, headers);
    let encoding = crate::record::header(headers, "content-encoding");
    let stream = if response {
        audit::response_frames(headers, &decoded.bytes)
    } else {
        None
    };
    html! {
        p.bodyinfo {
            (format::bytes(body.size)) " crossed the filter"
            @if body.truncated { " · " (mark("truncated", "truncated", "cut at max_body_bytes")) " " (format::bytes(body.bytes().map_or(0, |b| b.len() as u64))) " kept" }
            @if let Some(enc) = encoding { " · decoded from " code { (enc) } }
            @if let Some(p) = &decoded.problem { " · " span.warn { (p) } }
        }
        @if decoded.bytes.is_empty() && decoded.problem.is_none() {
            p.none { "(empty body)" }
        } @else {
            @match &stream {
                Some(s) => (stream_events(s)),
                None => (body_bytes(&decoded.bytes)),
            }
        }
    }
}

fn raw_exchange(record: &CaptureRecord) -> Markup {
    let req = &record.request;
    html! {
        section #request.raw {
            h2 { "Request" }
            p.line { code { (req.method) " " (req.scheme) "://" (req.authority) (req.path)
                @if !req.query.is_empty() { "?" (redacted_query(&req.query)) } } }
            details open { summary { "Headers (" (req.headers.len()) ")" } (headers_table(&req.headers)) }
            h3 { "Body" }
            (body_section(&req.body, &req.headers, false))
        }
        section #response.raw {
            h2 { "Response" }
            @match &record.response {
                None => p.none { "No response headers were produced (" (record.outcome.as_str()) ", " code { (record.detail) } ")." },
                Some(r) => {
                    p.line { (status_badge(Some(r.status)))
                        @if let Some(fb) = r.first_byte_ms { " · first byte after " (format::millis(fb)) } }
                    details open { summary { "Headers (" (r.headers.len()) ")" } (headers_table(&r.headers)) }
                    h3 { "Body" }
                    (body_section(&r.body, &r.headers, true))
                }
            }
        }
    }
}

/// A capture's page: the exchange at a glance, question, context and answer side by side, the
/// problems, the recognition, and the raw request and response.
pub fn capture(id: &str, read: &CaptureRead, viewer: Viewer) -> Markup {
    let view = &read.view;
    let json_href = format!("/v1/captures/{}", format::segment(id));
    html! {
        (layout(&format!("Capture {id}"), viewer, html! {
            nav.crumbs { a href="/ui" { "← Captures" } }
            @match &read.record {
                Ok(r) => {
                    h1.exchange {
                        span.method { (r.request.method) } " " span.path { (r.request.path) } " "
                        (status_badge(r.response.as_ref().map(|x| x.status))) " " (outcome_badge(r.outcome.as_str()))
                    }
                    p.meta {
                        span { "id " code #capture-id { (r.id) } }
                        span { (r.started_at) }
                        span { (format::millis(r.duration_ms)) }
                        span { code { (r.detail) } }
                        span { "protocol " strong #protocol { (view.protocol.as_str()) } }
                        @if let Some(m) = &view.model { span { "model " strong #model { (m) } } }
                        span { a #json href=(json_href) { "JSON record" } }
                    }
                }
                Err(e) => {
                    h1 { "Capture " code { (id) } }
                    p.error { "The stored line no longer validates: " (e) }
                    p { a #json href=(json_href) { "JSON record" } }
                }
            }
            @if let Some(place) = read.log { (log_place(id, place)) }
            @if view.body_truncated { p.notice { (mark("truncated", "truncated", "")) " A body was cut at the filter's max_body_bytes: what follows from it is partial." } }
            @if let Some(reason) = &view.reason { p.notice { "Not recognised: " (reason) } }
            (audit_columns(view, &read.verdicts))
            @if let Some(t) = &view.timing { (timing_section(t)) }
            section #problems.problems {
                h2 { "Problems" span.count { (view.problems.len()) } }
                @if view.problems.is_empty() { p.none { "none" } } @else {
                    ul { @for p in &view.problems { li { (p) } } }
                }
            }
            details.recognition {
                summary { "How the protocol was recognised" }
                ul { @for e in &view.recognised_from { li { code { (serde_json::to_value(e.source).ok().and_then(|v| v.as_str().map(str::to_owned)).unwrap_or_default()) } " → " (e.suggests.as_str()) ": " (e.detail) } } }
                @if !view.overruled.is_empty() {
                    p { "Overruled:" }
                    ul { @for e in &view.overruled { li { code { (serde_json::to_value(e.source).ok().and_then(|v| v.as_str().map(str::to_owned)).unwrap_or_default()) } " → " (e.suggests.as_str()) ": " (e.detail) } } }
                }
            }
            @if let Ok(r) = &read.record { div.exchange-raw { (raw_exchange(r)) } }
        }))
    }
}

/// Where the verifiable log has a capture: its index, the checkpoint that includes it, and a
/// link to its proof.
fn log_place(id: &str, place: crate::reads::LogPlace) -> Markup {
    let proof_href = format!("/v1/captures/{}/proof", format::segment(id));
    html! {
        p.meta #log {
            span { "verifiable log: " }
            @match (place.index, place.checkpoint_size) {
                (Some(i), Some(n)) if i < n => {
                    span { "index " strong #log-index { (i) } }
                    span { "in the signed checkpoint of size " strong #log-checkpoint { (n) } " ("
                        a href="/v1/log/checkpoint" { "checkpoint" } ")" }
                    span { a #log-proof href=(proof_href) { "inclusion proof" } }
                }
                (Some(i), _) => {
                    span { "index " strong #log-index { (i) } }
                    span { "not yet in a signed checkpoint: the next one includes it" }
                }
                (None, _) => span { "not yet sequenced: it gets its index within seconds" },
            }
        }
    }
}
