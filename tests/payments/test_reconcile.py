"""Reconciliation: the sandbox bank's own statement of a day, tampered to hold one break of each
kind, reconciled by the real ``holdfast reconcile`` command (exit 1), stored and served."""

from __future__ import annotations

import asyncio
import csv
import datetime as dt
import io
import os
import sys
from pathlib import Path

import orjson

from clearing.reconcile import reconcile
from tests.payments.support import Flow, beneficiary

DAY = dt.date(2031, 1, 15)  # the bank's business date for this test alone


async def _day_of_business(flow: Flow) -> dict[str, str]:
    """Three payments (one returned) and two credits, all on DAY; returns provider ids."""
    flow.sandbox.bank.business_date = DAY
    account = await flow.account(20_000)
    va = await flow.virtual_account(account)
    to = beneficiary("Jane Smith")
    flow.payee("Jane Smith", to)
    ids = {}
    for name, amount in (("a", 2_000), ("b", 3_000), ("c", 1_000)):
        r = await flow.pay(account, amount, to, reference=f"REC {name.upper()}")
        ids[name] = r.body["id"]
    await flow.settle()
    bank_ids = {k: (await flow.payment(v))["bank_payment_id"] for k, v in ids.items()}
    back = await flow.api.session.post(
        f"{flow.sandbox_url}/sandbox/bank/payments/{bank_ids['c']}/return")
    back.release()
    bank_ids["d"] = await flow.credit(4_000, {"sort_code": va["sort_code"],
                                              "account_number": va["account_number"]}, "salary")
    bank_ids["e"] = await flow.credit(700, None, f"gift {va['reference_code']}")
    await flow.settle()
    return bank_ids


async def _statement(flow: Flow, fmt: str) -> list[str]:
    async with flow.api.session.get(
            f"{flow.sandbox_url}/sandbox/bank/statement?format={fmt}") as r:
        text = await r.text()
    lines = text.splitlines()
    day = DAY.isoformat()
    if fmt == "csv":
        return [lines[0]] + [line for line in lines[1:] if f",{day}," in line]
    return [line for line in lines if orjson.loads(line)["date"] == day]


async def test_one_break_of_each_kind(flow: Flow, database_url: str, tmp_path: Path) -> None:
    ids = await _day_of_business(flow)
    lines = await _statement(flow, "csv")
    assert len(lines) == 1 + 6  # a, b, c, c's return, d, e
    rows = list(csv.DictReader(io.StringIO("\n".join(lines))))
    tampered = []
    for row in rows:
        if row["provider_id"] == ids["b"]:
            row["amount"] = "-3100"  # amount break
        elif row["provider_id"] == ids["d"]:
            continue  # missing in statement
        elif row["provider_id"] == ids["e"]:
            # no provider id, the reference typed differently: matched on amount, date and
            # normalised reference
            row["provider_id"] = ""
            row["reference"] = row["reference"].upper().replace(" ", " -- ")
        tampered.append(row)
    tampered.append({"provider_id": "btx_foreign_0001", "date": DAY.isoformat(),
                     "amount": "999", "currency": "GBP", "reference": "a stranger"})
    out_csv = io.StringIO()
    writer = csv.DictWriter(out_csv, fieldnames=list(rows[0]))
    writer.writeheader()
    writer.writerows(tampered)
    path = tmp_path / "statement.csv"
    path.write_text(out_csv.getvalue())

    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "authz.cli", "reconcile", str(path),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        env={**os.environ, "HOLDFAST_DATABASE_URL": database_url,
             "HOLDFAST_LOG_LEVEL": "WARNING"})
    out, err = await asyncio.wait_for(proc.communicate(), timeout=60)
    assert proc.returncode == 1, (out, err)
    report = out.decode()
    assert "BREAKS found" in report
    recon_id = report.split()[1]

    r = await flow.api.admin("GET", f"/v1/reconciliations/{recon_id}", scope="ops")
    assert r.status == 200 and r.body["ok"] is False
    assert r.body["summary"] == {"matched": 4, "missing_in_ledger": 1,
                                 "missing_in_statement": 1, "amount_breaks": 1}
    breaks = {b["kind"]: b for b in r.body["breaks"]}
    assert (breaks["amount_break"]["provider_id"], breaks["amount_break"]["statement_amount"],
            breaks["amount_break"]["ledger_amount"]) == (ids["b"], -3_100, -3_000)
    assert breaks["missing_in_statement"]["provider_id"] == ids["d"]
    assert breaks["missing_in_ledger"]["provider_id"] == "btx_foreign_0001"
    assert r.body["period"] == {"from": DAY.isoformat(), "to": DAY.isoformat()}
    support = await flow.api.admin("GET", f"/v1/reconciliations/{recon_id}", scope="customer")
    assert support.status == 403
    unknown = await flow.api.admin("GET", "/v1/reconciliations/rec_nope", scope="ops")
    assert (unknown.status, unknown.body["error"]["code"]) == (404, "unknown_reconciliation")

    # the untouched statement, as JSON lines, reconciles cleanly
    clean = "\n".join(await _statement(flow, "jsonl"))
    async with flow.db.acquire() as conn:
        _, result = await reconcile(conn, "clean.jsonl", clean, "jsonl",
                                    dt.datetime.now(dt.UTC))
    assert result.ok and result.count("matched") == 6
