"""Process counters: the pass summary and the daemon's /metrics both read them.

One `Metrics` per process (tests make their own), each with its own prometheus registry, so nothing is
global. Label values are bounded sets (endpoint kinds, Graph codes, table names), never ids or URLs, except
the per-account gauges, which exist once per configured account by design.
"""

from __future__ import annotations

import prometheus_client as prom


class Metrics:
    def __init__(self) -> None:
        self.registry = prom.CollectorRegistry(auto_describe=True)
        r = self.registry
        # Graph client
        self.graph_calls = prom.Counter(
            "ig_collector_graph_calls", "Graph API calls by endpoint kind, HTTP status and Graph error code",
            ["endpoint", "status", "code"], registry=r)
        self.graph_retries = prom.Counter(
            "ig_collector_graph_retries", "Graph API calls retried, by reason", ["reason"], registry=r)
        self.throttles = prom.Counter(
            "ig_collector_throttles",
            "Throttling answers from Meta, by scope (app, user, account) and Graph code", ["scope", "code"],
            registry=r)
        self.pauses = prom.Counter(
            "ig_collector_pauses", "Pauses imposed on a scope (app or account)", ["scope"], registry=r)
        self.paused_scopes = prom.Gauge(
            "ig_collector_paused_scopes", "Scopes currently paused", ["scope"], registry=r)
        self.budget_held_scopes = prom.Gauge(
            "ig_collector_budget_held_scopes",
            "Scopes whose reported usage holds their calls back now (spreading what is left of the budget, "
            "or waiting for the window to roll)", ["scope"], registry=r)
        self.graph_request_seconds = prom.Histogram(
            "ig_collector_graph_request_seconds", "Graph API request latency",
            buckets=(0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30), registry=r)
        # Writer
        self.rows_written = prom.Counter(
            "ig_collector_rows_written", "Rows committed to PostgreSQL, by table", ["table"], registry=r)
        self.writer_flush_seconds = prom.Histogram(
            "ig_collector_writer_flush_seconds", "Time to commit one writer batch",
            buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10), registry=r)
        self.writer_buffered_rows = prom.Gauge(
            "ig_collector_writer_buffered_rows", "Rows waiting in the writer buffer", registry=r)
        self.writer_wait_seconds = prom.Counter(
            "ig_collector_writer_wait_seconds", "Time producers spent blocked on a full writer buffer",
            registry=r)
        self.writer_errors = prom.Counter(
            "ig_collector_writer_errors", "Failed flush attempts (retried)", registry=r)
        # Collection
        self.jobs = prom.Counter(
            "ig_collector_jobs", "Jobs finished, by job and outcome", ["job", "outcome"], registry=r)
        self.unavailable = prom.Counter(
            "ig_collector_unavailable", "Data points recorded as unavailable, by reason", ["reason"],
            registry=r)
        self.queue_depth = prom.Gauge(
            "ig_collector_queue_depth", "Work items waiting, by queue", ["queue"], registry=r)
        self.last_success_age = prom.Gauge(
            "ig_collector_last_success_age_seconds", "Seconds since the last success, per account and job",
            ["ig_user_id", "job"], registry=r)
        self.token_expiry_days = prom.Gauge(
            "ig_collector_token_expiry_days", "Days until each account's token expires (when known)",
            ["ig_user_id"], registry=r)
        self.discovered_accounts = prom.Gauge(
            "ig_collector_discovered_accounts",
            "Accounts each [[tokens]] entry reached at its last successful discovery", ["token"], registry=r)
        self.token_problem = prom.Gauge(
            "ig_collector_token_problem", "1 while a token has the problem (discovery_failed, invalid, "
            "missing_scope, expiring, check_failed), else 0; token is '#N' for [[tokens]] #N",
            ["token", "problem"], registry=r)
        self.account_status = prom.Gauge(
            "ig_collector_account_ok", "1 when the account's last status is ok, else 0", ["ig_user_id"],
            registry=r)
        # Webhooks
        self.webhook_deliveries = prom.Counter(
            "ig_collector_webhook_deliveries", "Webhook deliveries, by outcome", ["outcome"], registry=r)

        # Leases (several instances on one database; collector.leases)
        self.cluster_info = prom.Gauge(
            "ig_collector_cluster_info", "This daemon's instance id (value 1)", ["instance_id"], registry=r)
        self.lease_claims = prom.Counter(
            "ig_collector_lease_claims", "Accounts claimed by this instance", registry=r)
        self.lease_takeovers = prom.Counter(
            "ig_collector_lease_takeovers", "Claims of an account whose holder's lease had expired",
            registry=r)
        self.lease_renewals = prom.Counter(
            "ig_collector_lease_renewals", "Lease renewals (one per held account per renewal round)",
            registry=r)
        self.lease_releases = prom.Counter(
            "ig_collector_lease_releases", "Leases released by this instance", registry=r)
        self.leases_lost = prom.Counter(
            "ig_collector_leases_lost", "Leases found taken over by another instance when renewing",
            registry=r)
        self.leases_held = prom.Gauge(
            "ig_collector_leases_held", "Accounts this instance holds now", registry=r)

    def exposition(self) -> bytes:
        """The Prometheus text format of every metric."""
        return bytes(prom.generate_latest(self.registry))

    def total(self, counter: prom.Counter, **labels: str) -> float:
        """Sum of a counter over all label sets matching `labels` (for summaries and tests)."""
        total = 0.0
        for family in counter.collect():
            for sample in family.samples:
                matches = all(sample.labels.get(k) == v for k, v in labels.items())
                if sample.name.endswith("_total") and matches:
                    total += sample.value
        return total
