"""``holdfast verify``: prove the ledger's invariants (DESIGN §5) against the database.

Each check is one SQL query that returns the rows violating it (at most ``_EXAMPLES`` of them), so
an empty result is a proof over the whole table, not a sample.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Final

from holds.db import Conn

__all__ = ["CHECKS", "PAYMENT_CHECKS", "Report", "Violation", "verify"]

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


# Payments (clearing/payments, migration 0005): each payment's hold and postings are exactly what
# its state says, its state is the end of its recorded history, and virtual accounts and
# inbound credits are what they claim.
PAYMENT_CHECKS: Final[tuple[tuple[str, str, str], ...]] = (
    ("payment_hold", "a payment's hold is its amount + fee, open until settled or refused", """
        SELECT format('payment %s in %s: hold %s of %s on %s (expected %s of %s on %s)', p.id,
                      p.status, h.state, h.amount, h.account_id,
                      CASE WHEN p.status IN ('settled', 'returned') THEN 'posted'
                           WHEN p.status IN ('rejected', 'blocked', 'cancelled') THEN 'released'
                           ELSE 'open' END, p.amount + p.fee, p.account_id)
          FROM payments p LEFT JOIN payment_holds h ON h.payment_id = p.id
         WHERE h.payment_id IS NULL OR h.amount <> p.amount + p.fee
            OR h.account_id <> p.account_id OR h.currency <> p.currency
            OR h.state <> CASE WHEN p.status IN ('settled', 'returned') THEN 'posted'
                               WHEN p.status IN ('rejected', 'blocked', 'cancelled')
                               THEN 'released' ELSE 'open' END"""),
    ("payment_postings", "a settled payment posted its amount and fee once; a return, back",
     """
        WITH moved AS (
            SELECT t.reference AS payment_id, p.account_id,
                   coalesce(sum(p.amount) FILTER (WHERE t.kind = 'payment'), 0) AS sent,
                   coalesce(sum(p.amount) FILTER (WHERE t.kind = 'payment_fee'), 0) AS fee,
                   coalesce(sum(p.amount) FILTER (WHERE t.kind = 'payment_return'), 0) AS back
              FROM ledger_transactions t JOIN postings p ON p.transaction_id = t.id
             WHERE t.kind IN ('payment', 'payment_fee', 'payment_return')
             GROUP BY t.reference, p.account_id)
        SELECT format('payment %s in %s: moved %s/%s/%s (sent/fee/returned) on %s', p.id,
                      p.status, coalesce(m.sent, 0), coalesce(m.fee, 0), coalesce(m.back, 0),
                      p.account_id)
          FROM payments p LEFT JOIN moved m ON m.payment_id = p.id AND m.account_id = p.account_id
         WHERE (coalesce(m.sent, 0), coalesce(m.fee, 0), coalesce(m.back, 0)) IS DISTINCT FROM (
                CASE WHEN p.status IN ('settled', 'returned') THEN -p.amount ELSE 0 END,
                CASE WHEN p.status IN ('settled', 'returned') THEN -p.fee ELSE 0 END,
                CASE WHEN p.status = 'returned' THEN p.amount ELSE 0 END)"""),
    ("payment_history", "a payment's state is where its recorded transitions lead", """
        SELECT format('payment %s: event %s from %s, but %s came before', e.payment_id, e.id,
                      coalesce(e.from_state, '(none)'), coalesce(e.previous, '(none)'))
          FROM (SELECT payment_id, id, from_state,
                       lag(to_state) OVER (PARTITION BY payment_id ORDER BY id) AS previous
                  FROM payment_events) e
         WHERE e.from_state IS DISTINCT FROM e.previous
        UNION ALL
        SELECT format('payment %s: status %s, history ends in %s', p.id, p.status,
                      coalesce(l.to_state, '(none)'))
          FROM payments p LEFT JOIN LATERAL (
                SELECT to_state FROM payment_events e WHERE e.payment_id = p.id
                 ORDER BY id DESC LIMIT 1) l ON true
         WHERE l.to_state IS DISTINCT FROM p.status"""),
    ("virtual_accounts", "virtual IBANs carry their sort code and number with valid check "
                         "digits; retired exactly when the account is closed", """
        SELECT format('virtual account %s (%s): IBAN %s, status %s', v.id, v.account_id,
                      v.iban, v.status)
          FROM virtual_accounts v
         WHERE NOT hf_iban_valid(v.iban) OR substr(v.iban, 9, 6) <> v.sort_code
            OR substr(v.iban, 15, 8) <> v.account_number
            OR (v.status = 'active') = EXISTS (SELECT 1 FROM account_closures c
                                                WHERE c.account_id = v.account_id)"""),
    ("inbound_credits", "each inbound credit is posted once to its account; suspense ones to "
                        "suspense, with a reason", """
        SELECT format('credit %s: %s %s to %s (%s) but posted %s', c.bank_transaction_id,
                      c.currency, c.amount, c.account_id, c.matched_by, p.amount)
          FROM inbound_credits c JOIN accounts a ON a.id = c.account_id
          LEFT JOIN postings p ON p.transaction_id = c.transaction_id
                              AND p.account_id = c.account_id
         WHERE p.amount IS DISTINCT FROM c.amount
            OR (c.matched_by = 'suspense') <> (a.kind = 'suspense')"""),
    ("payment_guards", "the payments journal's append-only triggers are installed", """
        SELECT format('trigger %s is missing', t.name)
          FROM unnest(ARRAY['payment_events_append_only', 'inbound_credits_append_only',
                            'bank_events_immutable']) AS t(name)
         WHERE NOT EXISTS (SELECT 1 FROM pg_trigger WHERE tgname = t.name AND tgenabled <> 'D')"""),
)

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
    ("held", "account held = open card holds' remaining + open payment holds", """
        SELECT format('account %s: held %s but open holds total %s (cards %s, payments %s)',
                      a.id, a.held, coalesce(h.total, 0) + coalesce(ph.total, 0),
                      coalesce(h.total, 0), coalesce(ph.total, 0))
          FROM accounts a
          LEFT JOIN (SELECT account_id, sum(remaining) AS total FROM holds
                      WHERE state = 'open' GROUP BY account_id) h ON h.account_id = a.id
          LEFT JOIN (SELECT account_id, sum(amount) AS total FROM payment_holds
                      WHERE state = 'open' GROUP BY account_id) ph ON ph.account_id = a.id
         WHERE a.held <> coalesce(h.total, 0) + coalesce(ph.total, 0)"""),
    ("expiry_mark", "no open hold expires before the expiry sweep's low-water mark", """
        SELECT format('hold %s: open, expires %s, before the sweep''s mark %s', h.id,
                      h.expires_at, m.swept_to)
          FROM holds h, hold_expiry_mark m
         WHERE h.state = 'open' AND h.expires_at < m.swept_to"""),
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
    ("one_initial_request", "an authorisation was created by at most one initial request", """
        SELECT format('authorization %s: %s initial requests', authorization_id, count(*))
          FROM authorization_requests WHERE kind = 'initial'
         GROUP BY authorization_id HAVING count(*) > 1"""),
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
    ("hold_currency", "a hold is in its account's currency", """
        SELECT format('hold %s in %s on account %s in %s', h.id, h.currency, a.id, a.currency)
          FROM holds h JOIN accounts a ON a.id = h.account_id
         WHERE h.currency <> a.currency"""),
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
    *PAYMENT_CHECKS,
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
