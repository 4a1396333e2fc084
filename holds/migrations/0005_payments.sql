-- Accounts and payments: account closing, virtual account numbers, payees (Confirmation of
-- Payee), outbound payments with their holds, state history and outbox, the bank's webhook
-- inbox, inbound credits, and reconciliations. Every money movement goes through the same
-- balanced, append-only journal as the cards; the counterparty side (settlement, fees) goes
-- through account_deltas so no payment waits on those hot rows.

-- A closed account keeps its history; closing retires its virtual account numbers.
CREATE TABLE account_closures (
    account_id  text PRIMARY KEY REFERENCES accounts (id),
    closed_at   timestamptz NOT NULL
);

-- Virtual account numbers: a UK sort code + 8-digit account number, the same as an IBAN
-- (GBkk BBBB SSSSSS AAAAAAAA), and a reference code for credits sent to the pooled account.
-- Numbers are never reused, even after retirement.
CREATE SEQUENCE virtual_account_numbers MINVALUE 10000000 MAXVALUE 99999999 NO CYCLE;

CREATE TABLE virtual_accounts (
    id              bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    account_id      text NOT NULL REFERENCES accounts (id),
    sort_code       char(6) NOT NULL CHECK (sort_code ~ '^[0-9]{6}$'),
    account_number  char(8) NOT NULL CHECK (account_number ~ '^[0-9]{8}$'),
    iban            text NOT NULL UNIQUE CHECK (iban ~ '^GB[0-9]{2}[A-Z]{4}[0-9]{14}$'),
    reference_code  text NOT NULL UNIQUE CHECK (reference_code ~ '^[A-Z0-9]{8}$'),
    status          text NOT NULL CHECK (status IN ('active', 'retired')),
    created_at      timestamptz NOT NULL,
    retired_at      timestamptz,
    UNIQUE (sort_code, account_number),
    CHECK ((status = 'retired') = (retired_at IS NOT NULL))
);
CREATE UNIQUE INDEX virtual_accounts_one_active ON virtual_accounts (account_id)
    WHERE status = 'active';

-- ISO 7064 MOD 97-10: an IBAN is valid when, with its first four characters moved to the end
-- and letters replaced by 10..35, the number leaves 1 modulo 97. `holdfast verify` uses it.
CREATE FUNCTION hf_iban_valid(p_iban text) RETURNS boolean LANGUAGE plpgsql IMMUTABLE AS $$
DECLARE
    v_digits text := '';
    v_char text;
BEGIN
    IF p_iban IS NULL OR p_iban !~ '^[A-Z]{2}[0-9]{2}[A-Z0-9]{11,30}$' THEN
        RETURN false;
    END IF;
    FOREACH v_char IN ARRAY regexp_split_to_array(substr(p_iban, 5) || substr(p_iban, 1, 4), '')
    LOOP
        v_digits := v_digits || CASE WHEN v_char ~ '[0-9]' THEN v_char
                                     ELSE (ascii(v_char) - 55)::text END;
    END LOOP;
    RETURN v_digits::numeric % 97 = 1;
END $$;

-- Payees an account has paid after a Confirmation of Payee check passed (or a close match was
-- confirmed by the customer). A payment to a payee not here, or under another name, is checked.
CREATE TABLE payees (
    account_id   text NOT NULL REFERENCES accounts (id),
    -- 'GB:<sort code>/<account number>' or the IBAN
    identifier   text NOT NULL,
    -- the confirmed name, normalised (case, spacing and punctuation do not make a new payee)
    name_key     text NOT NULL,
    cop_result   text NOT NULL,
    confirmed_at timestamptz NOT NULL,
    PRIMARY KEY (account_id, identifier)
);

CREATE TABLE payments (
    id              text PRIMARY KEY CHECK (id ~ '^pay_[0-9a-f]{32}$'),
    idempotency_key text NOT NULL UNIQUE,
    request_hash    text NOT NULL,
    account_id      text NOT NULL,
    currency        char(3) NOT NULL,
    amount          bigint NOT NULL CHECK (amount > 0),
    fee             bigint NOT NULL CHECK (fee >= 0),
    beneficiary_name text NOT NULL,
    sort_code       char(6) CHECK (sort_code ~ '^[0-9]{6}$'),
    account_number  char(8) CHECK (account_number ~ '^[0-9]{8}$'),
    iban            text,
    reference       text NOT NULL,
    status          text NOT NULL CHECK (status IN
                        ('checking_payee', 'pending_confirmation', 'queued', 'submitted',
                         'accepted', 'settled', 'returned', 'rejected', 'blocked',
                         'cancelled')),
    cop_result      text CHECK (cop_result IN ('match', 'close_match', 'no_match',
                                               'unavailable')),
    cop_name        text,
    bank_payment_id text UNIQUE,
    return_id       text UNIQUE,
    reason          text,
    settled_on      date,
    returned_on     date,
    created_at      timestamptz NOT NULL,
    updated_at      timestamptz NOT NULL,
    FOREIGN KEY (account_id, currency) REFERENCES accounts (id, currency),
    -- exactly one way of naming the beneficiary's account
    CHECK ((iban IS NULL) = (sort_code IS NOT NULL AND account_number IS NOT NULL)),
    CHECK (iban IS NULL OR (sort_code IS NULL AND account_number IS NULL))
);
CREATE INDEX payments_account ON payments (account_id, created_at);

-- The funds a payment holds from its intent until it settles (posted) or is refused (released):
-- the amount and the fee. Account held = open card holds + open payment holds.
CREATE TABLE payment_holds (
    payment_id  text PRIMARY KEY REFERENCES payments (id),
    account_id  text NOT NULL,
    currency    char(3) NOT NULL,
    amount      bigint NOT NULL CHECK (amount > 0),
    state       text NOT NULL CHECK (state IN ('open', 'posted', 'released')),
    created_at  timestamptz NOT NULL,
    updated_at  timestamptz NOT NULL,
    FOREIGN KEY (account_id, currency) REFERENCES accounts (id, currency)
);
CREATE INDEX payment_holds_open_account ON payment_holds (account_id) WHERE state = 'open';

-- Every transition a payment took (late facts that change nothing included), append-only.
CREATE TABLE payment_events (
    id            bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    payment_id    text NOT NULL REFERENCES payments (id),
    event         text NOT NULL,
    from_state    text,
    to_state      text NOT NULL,
    source        text NOT NULL CHECK (source IN ('api', 'outbox', 'bank')),
    bank_event_id text UNIQUE,
    detail        text,
    created_at    timestamptz NOT NULL
);
CREATE INDEX payment_events_payment ON payment_events (payment_id, id);
CREATE TRIGGER payment_events_append_only BEFORE UPDATE OR DELETE ON payment_events
    FOR EACH ROW EXECUTE FUNCTION hf_refuse_change();

-- Work for the bank, written in the same transaction as the state that needs it and carried
-- out by the payments worker (claimed with FOR UPDATE SKIP LOCKED and a lease, so a crashed
-- worker's job is picked up again, with the same idempotency key).
CREATE TABLE payment_outbox (
    id              bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    payment_id      text NOT NULL REFERENCES payments (id),
    kind            text NOT NULL CHECK (kind IN ('payee_check', 'submit')),
    status          text NOT NULL DEFAULT 'pending' CHECK (status IN ('pending', 'done', 'failed')),
    attempts        integer NOT NULL DEFAULT 0,
    next_attempt_at timestamptz NOT NULL,
    last_error      text,
    created_at      timestamptz NOT NULL,
    done_at         timestamptz,
    UNIQUE (payment_id, kind)
);
CREATE INDEX payment_outbox_due ON payment_outbox (next_attempt_at) WHERE status = 'pending';

-- The bank's webhooks, verified, stored raw (scrubbed) and immutable before they are
-- acknowledged, applied later by the payments worker. Kept apart from inbox_events so the card
-- lifecycle consumers never claim a bank fact.
CREATE TABLE bank_events (
    id                bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    provider          text NOT NULL,
    provider_event_id text NOT NULL CHECK (length(provider_event_id) BETWEEN 1 AND 255),
    type              text NOT NULL,
    payload           jsonb NOT NULL,
    payload_hash      text NOT NULL,
    -- the fact in canonical form (NULL: informational)
    canonical         jsonb,
    received_at       timestamptz NOT NULL DEFAULT now(),
    status            text NOT NULL DEFAULT 'pending'
                      CHECK (status IN ('pending', 'applied', 'quarantined')),
    attempts          integer NOT NULL DEFAULT 0,
    processed_at      timestamptz,
    quarantine_reason text,
    -- a quarantined fact that may become legal once the payment moves on (out of order), and
    -- the payment's last transition it was tried against: it is retried after a newer one
    retryable         boolean NOT NULL DEFAULT false,
    waiting_after     bigint,
    UNIQUE (provider, provider_event_id)
);
CREATE INDEX bank_events_pending ON bank_events (id) WHERE status = 'pending';
CREATE INDEX bank_events_retryable ON bank_events ((canonical ->> 'payment_id'))
    WHERE status = 'quarantined' AND retryable;

CREATE FUNCTION hf_bank_event_immutable() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF NEW.provider IS DISTINCT FROM OLD.provider
       OR NEW.provider_event_id IS DISTINCT FROM OLD.provider_event_id
       OR NEW.type IS DISTINCT FROM OLD.type
       OR NEW.payload IS DISTINCT FROM OLD.payload
       OR NEW.payload_hash IS DISTINCT FROM OLD.payload_hash
       OR NEW.canonical IS DISTINCT FROM OLD.canonical
       OR NEW.received_at IS DISTINCT FROM OLD.received_at THEN
        RAISE EXCEPTION 'bank event % is immutable: only its processing state may change', OLD.id
            USING ERRCODE = 'HF002';
    END IF;
    RETURN NEW;
END $$;

CREATE TRIGGER bank_events_immutable BEFORE UPDATE ON bank_events
    FOR EACH ROW EXECUTE FUNCTION hf_bank_event_immutable();
CREATE TRIGGER bank_events_no_delete BEFORE DELETE ON bank_events
    FOR EACH ROW EXECUTE FUNCTION hf_refuse_change();

CREATE FUNCTION hf_payments_notify() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('holdfast_payments', '');
    RETURN NULL;
END $$;

CREATE TRIGGER bank_events_notify AFTER INSERT ON bank_events
    FOR EACH STATEMENT EXECUTE FUNCTION hf_payments_notify();
CREATE TRIGGER payment_outbox_notify AFTER INSERT ON payment_outbox
    FOR EACH STATEMENT EXECUTE FUNCTION hf_payments_notify();

-- Credits the bank received for us, each once (by the bank's transaction id), and where they went.
CREATE TABLE inbound_credits (
    id                  bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    bank_transaction_id text NOT NULL UNIQUE,
    bank_event_id       text NOT NULL,
    account_id          text NOT NULL,
    currency            char(3) NOT NULL,
    amount              bigint NOT NULL CHECK (amount > 0),
    matched_by          text NOT NULL CHECK (matched_by IN
                            ('virtual_account', 'reference', 'suspense')),
    suspense_reason     text,
    virtual_account_id  bigint REFERENCES virtual_accounts (id),
    payer_name          text,
    reference           text,
    value_date          date NOT NULL,
    transaction_id      bigint NOT NULL REFERENCES ledger_transactions (id),
    created_at          timestamptz NOT NULL,
    FOREIGN KEY (account_id, currency) REFERENCES accounts (id, currency),
    CHECK ((matched_by = 'suspense') = (suspense_reason IS NOT NULL))
);
CREATE INDEX inbound_credits_account ON inbound_credits (account_id);
CREATE TRIGGER inbound_credits_append_only BEFORE UPDATE OR DELETE ON inbound_credits
    FOR EACH ROW EXECUTE FUNCTION hf_refuse_change();

CREATE TABLE reconciliations (
    id                   text PRIMARY KEY,
    source               text NOT NULL,
    format               text NOT NULL CHECK (format IN ('csv', 'jsonl')),
    period_from          date,
    period_to            date,
    matched              integer NOT NULL,
    missing_in_ledger    integer NOT NULL,
    missing_in_statement integer NOT NULL,
    amount_breaks        integer NOT NULL,
    created_at           timestamptz NOT NULL
);

CREATE TABLE reconciliation_items (
    id                bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    reconciliation_id text NOT NULL REFERENCES reconciliations (id),
    kind              text NOT NULL CHECK (kind IN
                          ('matched', 'missing_in_ledger', 'missing_in_statement',
                           'amount_break')),
    matched_by        text CHECK (matched_by IN ('provider_id', 'amount_date_reference')),
    provider_id       text,
    currency          char(3) NOT NULL,
    statement_amount  bigint,
    ledger_amount     bigint,
    entry_date        date NOT NULL,
    reference         text,
    ledger_ref        text
);
CREATE INDEX reconciliation_items_reconciliation ON reconciliation_items (reconciliation_id, id);

-- The fees account of a currency, created on first use (like the settlement account).
CREATE FUNCTION hf_fees_account(p_currency text) RETURNS text LANGUAGE plpgsql AS $$
DECLARE
    v_id text := 'fees-' || p_currency;
BEGIN
    IF NOT EXISTS (SELECT 1 FROM accounts WHERE id = v_id) THEN
        INSERT INTO accounts (id, kind, currency) VALUES (v_id, 'fees', p_currency)
            ON CONFLICT (id) DO NOTHING;
    END IF;
    RETURN v_id;
END $$;

-- The suspense account of a currency: credits nobody could be matched to wait here.
CREATE FUNCTION hf_suspense_account(p_currency text) RETURNS text LANGUAGE plpgsql AS $$
DECLARE
    v_id text := 'suspense-' || p_currency;
BEGIN
    IF NOT EXISTS (SELECT 1 FROM accounts WHERE id = v_id) THEN
        INSERT INTO accounts (id, kind, currency) VALUES (v_id, 'suspense', p_currency)
            ON CONFLICT (id) DO NOTHING;
    END IF;
    RETURN v_id;
END $$;

-- A balanced two-leg transfer between an account (locked by the caller; its posted balance is
-- updated now) and a counterparty (settlement or fees: through account_deltas).
-- p_amount > 0 credits the account.
CREATE FUNCTION hf_transfer_with(p_kind text, p_key text, p_account text, p_counterparty text,
                                 p_currency text, p_amount bigint, p_reference text)
RETURNS bigint LANGUAGE plpgsql AS $$
DECLARE
    v_tx bigint;
BEGIN
    INSERT INTO ledger_transactions (kind, idempotency_key, reference)
        VALUES (p_kind, p_key, p_reference) RETURNING id INTO v_tx;
    INSERT INTO postings (transaction_id, account_id, currency, amount) VALUES
        (v_tx, p_account, p_currency, p_amount),
        (v_tx, p_counterparty, p_currency, -p_amount);
    UPDATE accounts a SET posted = a.posted + p_amount, updated_at = now() WHERE a.id = p_account;
    INSERT INTO account_deltas (account_id, amount) VALUES (p_counterparty, -p_amount);
    RETURN v_tx;
END $$;

-- A payment intent: store it and hold its amount and fee, in one call. Idempotent on p_key
-- (status 'replay' with the same request hash, else 'conflict'). Refusals change nothing.
-- A payee confirmed under this name (p_identifier, p_name_key) needs no check: the payment is
-- queued at once. Otherwise its payee check is due at p_check_at: the API runs it within the
-- request, the payments worker only if the request did not (crashed, timed out).
CREATE FUNCTION hf_payment_create(
    p_id text, p_key text, p_request_hash text, p_account text, p_currency text,
    p_amount bigint, p_fee bigint, p_name text, p_sort_code text, p_account_number text,
    p_iban text, p_reference text, p_identifier text, p_name_key text, p_now timestamptz,
    p_check_at timestamptz)
RETURNS TABLE (status text, payment_id text) LANGUAGE plpgsql AS $$
DECLARE
    acct accounts%ROWTYPE;
    prior payments%ROWTYPE;
    v_state text;
BEGIN
    SELECT * INTO prior FROM payments p WHERE p.idempotency_key = p_key;
    IF FOUND THEN
        RETURN QUERY SELECT CASE WHEN prior.request_hash = p_request_hash THEN 'replay'
                                 ELSE 'conflict' END, prior.id;
        RETURN;
    END IF;
    SELECT * INTO acct FROM accounts a WHERE a.id = p_account FOR NO KEY UPDATE;
    IF NOT FOUND THEN
        RETURN QUERY SELECT 'unknown_account'::text, NULL::text;
        RETURN;
    END IF;
    IF acct.kind <> 'customer' THEN
        RETURN QUERY SELECT 'wrong_kind'::text, NULL::text;
        RETURN;
    END IF;
    IF EXISTS (SELECT 1 FROM account_closures c WHERE c.account_id = p_account) THEN
        RETURN QUERY SELECT 'account_closed'::text, NULL::text;
        RETURN;
    END IF;
    IF acct.currency <> p_currency THEN
        RETURN QUERY SELECT 'currency_mismatch'::text, NULL::text;
        RETURN;
    END IF;
    IF acct.posted - acct.held + acct.overdraft_limit < p_amount + p_fee THEN
        RETURN QUERY SELECT 'insufficient_funds'::text, NULL::text;
        RETURN;
    END IF;
    v_state := CASE WHEN EXISTS (SELECT 1 FROM payees y WHERE y.account_id = p_account
                                    AND y.identifier = p_identifier AND y.name_key = p_name_key)
                    THEN 'queued' ELSE 'checking_payee' END;
    INSERT INTO payments (id, idempotency_key, request_hash, account_id, currency, amount, fee,
        beneficiary_name, sort_code, account_number, iban, reference, status, created_at,
        updated_at)
    VALUES (p_id, p_key, p_request_hash, p_account, p_currency, p_amount, p_fee, p_name,
        p_sort_code, p_account_number, p_iban, p_reference, v_state, p_now, p_now)
    ON CONFLICT (idempotency_key) DO NOTHING;
    IF NOT FOUND THEN
        -- the same key won a race on another account: answer as a replay of that one
        SELECT * INTO prior FROM payments p WHERE p.idempotency_key = p_key;
        RETURN QUERY SELECT CASE WHEN prior.request_hash = p_request_hash THEN 'replay'
                                 ELSE 'conflict' END, prior.id;
        RETURN;
    END IF;
    INSERT INTO payment_holds (payment_id, account_id, currency, amount, state, created_at,
                               updated_at)
    VALUES (p_id, p_account, p_currency, p_amount + p_fee, 'open', p_now, p_now);
    UPDATE accounts a SET held = a.held + p_amount + p_fee, updated_at = p_now
     WHERE a.id = p_account;
    INSERT INTO payment_outbox (payment_id, kind, next_attempt_at, created_at)
    VALUES (p_id, CASE v_state WHEN 'queued' THEN 'submit' ELSE 'payee_check' END,
            CASE v_state WHEN 'queued' THEN p_now ELSE p_check_at END, p_now);
    INSERT INTO payment_events (payment_id, event, from_state, to_state, source, created_at)
    VALUES (p_id, 'created', NULL, v_state, 'api', p_now);
    RETURN QUERY SELECT 'created'::text, p_id;
END $$;

-- The ledger effects of a payment's transitions. The caller holds the payment row lock and
-- has decided the transition by the state table (clearing/payments/states.py); each function
-- locks the payment's hold, then the account, and refuses to act twice (HF010).
CREATE FUNCTION hf_payment_hold(p_payment_id text, p_expected text)
RETURNS payment_holds LANGUAGE plpgsql AS $$
DECLARE
    h payment_holds%ROWTYPE;
BEGIN
    SELECT * INTO h FROM payment_holds WHERE payment_id = p_payment_id FOR UPDATE;
    IF NOT FOUND OR h.state <> p_expected THEN
        RAISE EXCEPTION 'payment % hold is % (expected %)', p_payment_id,
            coalesce(h.state, 'missing'), p_expected USING ERRCODE = 'HF010';
    END IF;
    PERFORM 1 FROM accounts WHERE id = h.account_id FOR NO KEY UPDATE;
    RETURN h;
END $$;

-- Rejected, blocked or cancelled: the held amount and fee become available again.
CREATE FUNCTION hf_payment_release(p_payment_id text, p_now timestamptz)
RETURNS void LANGUAGE plpgsql AS $$
DECLARE
    h payment_holds%ROWTYPE := hf_payment_hold(p_payment_id, 'open');
BEGIN
    UPDATE payment_holds SET state = 'released', updated_at = p_now
     WHERE payment_id = p_payment_id;
    UPDATE accounts SET held = held - h.amount, updated_at = p_now WHERE id = h.account_id;
END $$;

-- Settled: the hold becomes postings, the amount to the settlement account and the fee, as a
-- transaction of its own, to the fees account.
CREATE FUNCTION hf_payment_settle(p_payment_id text, p_now timestamptz)
RETURNS bigint LANGUAGE plpgsql AS $$
DECLARE
    h payment_holds%ROWTYPE := hf_payment_hold(p_payment_id, 'open');
    pay payments%ROWTYPE;
    v_tx bigint;
BEGIN
    SELECT * INTO pay FROM payments WHERE id = p_payment_id;
    UPDATE payment_holds SET state = 'posted', updated_at = p_now
     WHERE payment_id = p_payment_id;
    UPDATE accounts SET held = held - h.amount, updated_at = p_now WHERE id = h.account_id;
    v_tx := hf_transfer_with('payment', 'payment:' || pay.id || ':settle', pay.account_id,
                             hf_settlement_account(pay.currency), pay.currency, -pay.amount,
                             pay.id);
    IF pay.fee > 0 THEN
        PERFORM hf_transfer_with('payment_fee', 'payment:' || pay.id || ':fee', pay.account_id,
                                 hf_fees_account(pay.currency), pay.currency, -pay.fee, pay.id);
    END IF;
    RETURN v_tx;
END $$;

-- Returned after settlement: the amount comes back (the fee is kept: the payment was made).
CREATE FUNCTION hf_payment_return(p_payment_id text, p_now timestamptz)
RETURNS bigint LANGUAGE plpgsql AS $$
DECLARE
    h payment_holds%ROWTYPE := hf_payment_hold(p_payment_id, 'posted');
    pay payments%ROWTYPE;
BEGIN
    SELECT * INTO pay FROM payments WHERE id = p_payment_id;
    RETURN hf_transfer_with('payment_return', 'payment:' || pay.id || ':return', h.account_id,
                            hf_settlement_account(pay.currency), pay.currency, pay.amount,
                            pay.id);
END $$;
