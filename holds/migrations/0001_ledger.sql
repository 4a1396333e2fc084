-- Holdfast ledger: accounts, double-entry transactions and postings.
-- PostgreSQL itself refuses an unbalanced transaction (deferred constraint trigger) and any
-- UPDATE, DELETE or TRUNCATE of the journal (postings, ledger_transactions).

CREATE TABLE accounts (
    id              text PRIMARY KEY CHECK (id ~ '^[A-Za-z0-9._:-]{1,64}$'),
    kind            text NOT NULL CHECK (kind IN ('customer', 'settlement', 'fees', 'suspense')),
    currency        char(3) NOT NULL CHECK (currency ~ '^[A-Z]{3}$'),
    posted          bigint NOT NULL DEFAULT 0,
    held            bigint NOT NULL DEFAULT 0 CHECK (held >= 0),
    overdraft_limit bigint NOT NULL DEFAULT 0 CHECK (overdraft_limit >= 0),
    created_at      timestamptz NOT NULL DEFAULT now(),
    updated_at      timestamptz NOT NULL DEFAULT now(),
    -- lets postings reference (account, currency) so a posting can never be in a foreign currency
    UNIQUE (id, currency)
);

CREATE TABLE ledger_transactions (
    id              bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    kind            text NOT NULL,
    -- the operation's idempotency key (e.g. 'deposit:<account>:<Idempotency-Key>'); a replay
    -- finds it and returns the stored result
    idempotency_key text UNIQUE,
    request_hash    text,
    reference       text,
    -- forced postings (clearing without authorisation, advice) may take an account below its
    -- overdraft limit; they are flagged so `holdfast verify` can tell them from a bug
    forced          boolean NOT NULL DEFAULT false,
    created_at      timestamptz NOT NULL DEFAULT now()
);

-- amount > 0 raises the account's posted balance, amount < 0 lowers it
CREATE TABLE postings (
    id              bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    transaction_id  bigint NOT NULL REFERENCES ledger_transactions (id),
    account_id      text NOT NULL,
    currency        char(3) NOT NULL,
    amount          bigint NOT NULL CHECK (amount <> 0),
    created_at      timestamptz NOT NULL DEFAULT now(),
    FOREIGN KEY (account_id, currency) REFERENCES accounts (id, currency)
);
CREATE INDEX postings_transaction ON postings (transaction_id);
CREATE INDEX postings_account ON postings (account_id, id);

-- Pending changes to the posted balance of settlement accounts. Every card and deposit touches the
-- settlement account of its currency; updating that one row in each transaction would serialise
-- them all, so its side is journalled in `postings` at once and its `posted` counter is brought
-- up to date in batches (hf_rollup_deltas). Invariant: posted + pending deltas = sum(postings).
CREATE TABLE account_deltas (
    id          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    account_id  text NOT NULL REFERENCES accounts (id),
    amount      bigint NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX account_deltas_account ON account_deltas (account_id);

CREATE FUNCTION hf_check_balanced() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    bad record;
BEGIN
    SELECT currency, sum(amount) AS total INTO bad
      FROM postings WHERE transaction_id = NEW.transaction_id
     GROUP BY currency HAVING sum(amount) <> 0 LIMIT 1;
    IF FOUND THEN
        RAISE EXCEPTION 'unbalanced ledger transaction %: % postings sum to % (debits must equal credits)',
            NEW.transaction_id, bad.currency, bad.total
            USING ERRCODE = 'HF001';
    END IF;
    RETURN NULL;
END $$;

CREATE CONSTRAINT TRIGGER postings_balanced
    AFTER INSERT ON postings
    DEFERRABLE INITIALLY DEFERRED
    FOR EACH ROW EXECUTE FUNCTION hf_check_balanced();

CREATE FUNCTION hf_refuse_change() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'the ledger journal is append-only: % on % refused', TG_OP, TG_TABLE_NAME
        USING ERRCODE = 'HF002';
END $$;

CREATE TRIGGER postings_append_only BEFORE UPDATE OR DELETE ON postings
    FOR EACH ROW EXECUTE FUNCTION hf_refuse_change();
CREATE TRIGGER postings_no_truncate BEFORE TRUNCATE ON postings
    FOR EACH STATEMENT EXECUTE FUNCTION hf_refuse_change();
CREATE TRIGGER ledger_transactions_append_only BEFORE UPDATE OR DELETE ON ledger_transactions
    FOR EACH ROW EXECUTE FUNCTION hf_refuse_change();
CREATE TRIGGER ledger_transactions_no_truncate BEFORE TRUNCATE ON ledger_transactions
    FOR EACH STATEMENT EXECUTE FUNCTION hf_refuse_change();

-- One settlement account per currency is the counterparty of deposits and card postings.
CREATE FUNCTION hf_settlement_account(p_currency text) RETURNS text LANGUAGE plpgsql AS $$
DECLARE
    v_id text := 'settlement-' || p_currency;
BEGIN
    IF NOT EXISTS (SELECT 1 FROM accounts WHERE id = v_id) THEN
        INSERT INTO accounts (id, kind, currency) VALUES (v_id, 'settlement', p_currency)
            ON CONFLICT (id) DO NOTHING;
    END IF;
    RETURN v_id;
END $$;

-- A balanced two-leg transfer between an account (locked by the caller) and the settlement
-- account of its currency: p_amount > 0 credits the account, < 0 debits it. The account's posted
-- balance is updated now; the settlement side goes through account_deltas.
CREATE FUNCTION hf_transfer(p_kind text, p_key text, p_request_hash text, p_account text,
                            p_currency text, p_amount bigint, p_forced boolean,
                            p_reference text)
RETURNS bigint LANGUAGE plpgsql AS $$
DECLARE
    v_settlement text := hf_settlement_account(p_currency);
    v_tx bigint;
BEGIN
    INSERT INTO ledger_transactions (kind, idempotency_key, request_hash, reference, forced)
        VALUES (p_kind, p_key, p_request_hash, p_reference, p_forced) RETURNING id INTO v_tx;
    INSERT INTO postings (transaction_id, account_id, currency, amount) VALUES
        (v_tx, p_account, p_currency, p_amount),
        (v_tx, v_settlement, p_currency, -p_amount);
    UPDATE accounts a SET posted = a.posted + p_amount, updated_at = now() WHERE a.id = p_account;
    INSERT INTO account_deltas (account_id, amount) VALUES (v_settlement, -p_amount);
    RETURN v_tx;
END $$;

-- Apply up to p_limit pending deltas; returns how many were applied.
CREATE FUNCTION hf_rollup_deltas(p_limit integer) RETURNS integer LANGUAGE plpgsql AS $$
DECLARE
    v_count integer;
BEGIN
    WITH taken AS (
        DELETE FROM account_deltas WHERE id IN (
            SELECT id FROM account_deltas ORDER BY id LIMIT p_limit FOR UPDATE SKIP LOCKED)
        RETURNING account_id, amount
    ), sums AS (
        SELECT account_id, sum(amount) AS total, count(*) AS n FROM taken GROUP BY account_id
    ), applied AS (
        UPDATE accounts a SET posted = a.posted + s.total, updated_at = now()
          FROM sums s WHERE a.id = s.account_id RETURNING s.n
    )
    SELECT coalesce(sum(n), 0) INTO v_count FROM applied;
    RETURN v_count;
END $$;

-- Deposit: funds a customer account from the settlement account of its currency.
-- Idempotent on p_key; the same key with another body returns status 'conflict'.
CREATE FUNCTION hf_deposit(p_key text, p_account text, p_amount bigint, p_reference text,
                           p_request_hash text)
RETURNS TABLE (status text, transaction_id bigint, account_id text, amount bigint,
               currency text, reference text, created_at timestamptz)
LANGUAGE plpgsql AS $$
DECLARE
    acct accounts%ROWTYPE;
    prior ledger_transactions%ROWTYPE;
    v_tx bigint;
BEGIN
    IF p_amount <= 0 THEN
        RAISE EXCEPTION 'deposit amount must be positive' USING ERRCODE = 'HF003';
    END IF;
    SELECT * INTO acct FROM accounts a WHERE a.id = p_account FOR NO KEY UPDATE;
    IF NOT FOUND THEN
        RETURN QUERY SELECT 'unknown_account'::text, NULL::bigint, p_account, p_amount,
            NULL::text, p_reference, NULL::timestamptz;
        RETURN;
    END IF;
    IF acct.kind = 'settlement' THEN
        RETURN QUERY SELECT 'wrong_kind'::text, NULL::bigint, p_account, p_amount,
            acct.currency::text, p_reference, NULL::timestamptz;
        RETURN;
    END IF;
    SELECT * INTO prior FROM ledger_transactions t WHERE t.idempotency_key = p_key;
    IF FOUND THEN
        RETURN QUERY SELECT
            CASE WHEN prior.request_hash = p_request_hash THEN 'replay' ELSE 'conflict' END,
            prior.id, p_account, p_amount, acct.currency::text, prior.reference, prior.created_at;
        RETURN;
    END IF;
    v_tx := hf_transfer('deposit', p_key, p_request_hash, p_account, acct.currency, p_amount,
                        false, p_reference);
    RETURN QUERY SELECT 'created'::text, v_tx, p_account, p_amount, acct.currency::text,
        p_reference, now();
END $$;
