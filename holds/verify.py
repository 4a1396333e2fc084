"""``holdfast verify``: prove the ledger's invariants (DESIGN §5) against the database.

Each check is one SQL query that returns the rows violating it (at most ``_EXAMPLES`` of them), so
an empty result is a proof over the whole table, not a sample.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Final

from holds.db import Conn

__all__ = ["CHECKS", "Report", "Violation", "verify"]

_EXAMPLES: Final = 20


@dataclass(frozen=True, slots=True)
class Violation:
    check: str
    detail: str


@dataclass(slots=True)
class Report:
    checks_run: int = 0
    violations: list[Violation] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.violations

    def render(self) -> str:
        if self.ok:
            return f"ledger verified: {self.checks_run} invariants hold"
        lines = [f"ledger INVALID: {len(self.violations)} violation(s)"]
        lines += [f"  [{v.check}] {v.detail}" for v in self.violations]
        return "\n".join(lines)


# (name, what it proves, query returning one text column per violating row)
CHECKS: Final[tuple[tuple[str, str, str], ...]] = (
    ("balanced", "every ledger transaction sums to zero per currency", """
        SELECT format('transaction %s: %s postings sum to %s', transaction_id, currency,
                      sum(amount))
          FROM postings GROUP BY transaction_id, currency HAVING sum(amount) <> 0"""),
    ("posted", "account posted + pending deltas = sum of its postings", """
        SELECT format('account %s: posted %s (+%s pending) but postings sum to %s', a.id,
                      a.posted, coalesce(d.total, 0), coalesce(p.total, 0))
          FROM accounts a
          LEFT JOIN (SELECT account_id, sum(amount) AS total FROM postings GROUP BY account_id) p
            ON p.account_id = a.id
          LEFT JOIN (SELECT account_id, sum(amount) AS total FROM account_deltas
                      GROUP BY account_id) d ON d.account_id = a.id
         WHERE a.posted + coalesce(d.total, 0) <> coalesce(p.total, 0)"""),
    ("held", "account held = sum of the remaining amounts of its open holds", """
        SELECT format('account %s: held %s but open holds total %s', a.id, a.held,
                      coalesce(h.total, 0))
          FROM accounts a
          LEFT JOIN (SELECT account_id, sum(remaining) AS total FROM holds
                      WHERE state = 'open' GROUP BY account_id) h ON h.account_id = a.id
         WHERE a.held <> coalesce(h.total, 0)"""),
    ("hold_parts", "each hold's parts add up and none is negative", """
        SELECT format('hold %s: authorized %s, posted %s, over-posted %s, released %s, '
                      'remaining %s, state %s', id, authorized, posted, over_posted, released,
                      remaining, state)
          FROM holds
         WHERE authorized <> (posted - over_posted) + released + remaining
            OR least(authorized, posted, over_posted, released, remaining) < 0
            OR over_posted > posted OR (state <> 'open' AND remaining <> 0)"""),
    ("overdraft", "no customer account below -overdraft unless a forced posting took it there", """
        SELECT format('account %s: available %s below overdraft limit %s', a.id,
                      a.posted - a.held + a.overdraft_limit, a.overdraft_limit)
          FROM accounts a
         WHERE a.kind = 'customer' AND a.posted - a.held + a.overdraft_limit < 0
           AND NOT EXISTS (SELECT 1 FROM postings p JOIN ledger_transactions t
                             ON t.id = p.transaction_id
                            WHERE p.account_id = a.id AND t.forced)
           AND NOT EXISTS (SELECT 1 FROM holds h WHERE h.account_id = a.id AND h.forced)"""),
    ("one_decision", "each provider request identity has exactly one decision", """
        SELECT format('%s %s #%s: %s decisions', provider, provider_id, sequence, count(*))
          FROM authorization_requests GROUP BY provider, provider_id, sequence
        HAVING count(*) > 1"""),
    ("hold_matches_approvals", "a hold's authorised amount = the sum of its approvals", """
        SELECT format('authorization %s: approvals total %s, hold authorised %s', a.id,
                      coalesce(r.total, 0), coalesce(h.authorized, 0))
          FROM authorizations a
          LEFT JOIN (SELECT authorization_id, sum(approved_amount) AS total
                       FROM authorization_requests GROUP BY authorization_id) r
            ON r.authorization_id = a.id
          LEFT JOIN holds h ON h.id = a.id
         WHERE coalesce(r.total, 0) <> coalesce(h.authorized, 0)
            OR a.approved_amount <> coalesce(r.total, 0)"""),
    ("hold_account", "a hold sits on its authorisation's account and currency", """
        SELECT format('hold %s on %s/%s, authorization on %s/%s', h.id, h.account_id, h.currency,
                      a.account_id, a.currency)
          FROM holds h JOIN authorizations a ON a.id = h.id
         WHERE h.account_id IS DISTINCT FROM a.account_id OR h.currency <> a.currency"""),
    ("declined_without_hold", "a declined authorisation holds nothing", """
        SELECT format('authorization %s is declined but has a hold', a.id)
          FROM authorizations a JOIN holds h ON h.id = a.id WHERE a.state = 'declined'"""),
    ("posted_once", "a hold's posted amount = the clearings posted against it, each once", """
        SELECT format('hold %s: posted %s but clearing operations total %s', h.id, h.posted,
                      coalesce(o.total, 0))
          FROM holds h
          LEFT JOIN (SELECT authorization_id, sum(posted) AS total FROM ledger_operations
                      WHERE kind = 'post' GROUP BY authorization_id) o
            ON o.authorization_id = h.id
         WHERE h.posted <> coalesce(o.total, 0)"""),
    ("operation_postings", "every posting operation has exactly its balanced transaction", """
        SELECT format('operation %s (%s): transaction %s moved %s on %s', o.op_id, o.kind,
                      o.transaction_id, coalesce(p.amount, 0), o.account_id)
          FROM ledger_operations o
          LEFT JOIN postings p ON p.transaction_id = o.transaction_id
                              AND p.account_id = o.account_id
         WHERE o.kind IN ('post', 'refund', 'chargeback', 'chargeback_lost')
           AND (o.transaction_id IS NULL OR p.amount IS DISTINCT FROM
                CASE o.kind WHEN 'post' THEN -o.posted WHEN 'chargeback_lost' THEN -o.requested
                            ELSE o.requested END)"""),
    ("journal_guards", "the journal's append-only and balance triggers are installed", """
        SELECT format('trigger %s is missing', t.name)
          FROM unnest(ARRAY['postings_balanced', 'postings_append_only', 'postings_no_truncate',
                            'ledger_transactions_append_only',
                            'ledger_transactions_no_truncate',
                            'ledger_operations_append_only']) AS t(name)
         WHERE NOT EXISTS (SELECT 1 FROM pg_trigger WHERE tgname = t.name AND tgenabled <> 'D')"""),
)


async def verify(conn: Conn) -> Report:
    """Run every check in one read-only REPEATABLE READ snapshot, so a ledger that is being
    written to meanwhile is judged as of one instant."""
    report = Report()
    async with conn.transaction(isolation="repeatable_read", readonly=True):
        for name, _, query in CHECKS:
            rows = await conn.fetch(f"{query} LIMIT {_EXAMPLES}")
            report.checks_run += 1
            report.violations += [Violation(name, r[0]) for r in rows]
    return report
