-- Cards, versioned policies, authorisations, their decisions, and holds; hf_authorize, the one
-- PL/pgSQL call the hot path makes per authorisation request.

CREATE TABLE cards (
    id          text PRIMARY KEY CHECK (id ~ '^[A-Za-z0-9._:-]{1,64}$'),
    account_id  text NOT NULL REFERENCES accounts (id),
    state       text NOT NULL CHECK (state IN ('active', 'frozen', 'terminated')),
    -- bumped on every change of state or policy; the Redis cache only accepts newer versions
    version     integer NOT NULL DEFAULT 1,
    policy_version integer NOT NULL DEFAULT 1,
    expires     char(7) CHECK (expires ~ '^[0-9]{4}-(0[1-9]|1[0-2])$'),
    last4       char(4) CHECK (last4 ~ '^[0-9]{4}$'),
    created_at  timestamptz NOT NULL DEFAULT now(),
    updated_at  timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX cards_account ON cards (account_id);

CREATE TABLE card_policies (
    card_id     text NOT NULL REFERENCES cards (id),
    version     integer NOT NULL,
    policy      jsonb NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (card_id, version)
);

-- The lifecycle object: one per provider authorisation, holding at most one hold.
CREATE TABLE authorizations (
    id              text PRIMARY KEY,
    provider        text NOT NULL,
    provider_id     text NOT NULL,
    card_id         text NOT NULL,
    account_id      text REFERENCES accounts (id),
    currency        char(3) NOT NULL,
    state           text NOT NULL CHECK (state IN
                        ('pending', 'declined', 'partially_reversed', 'reversed', 'cleared',
                         'expired')),
    requested_amount bigint NOT NULL CHECK (requested_amount >= 0),
    approved_amount bigint NOT NULL CHECK (approved_amount >= 0),
    merchant_id     text,
    merchant_name   text,
    mcc             char(4),
    country         char(2),
    channel         text,
    created_at      timestamptz NOT NULL,
    updated_at      timestamptz NOT NULL
    -- no index beyond the primary key: every index here is paid on each authorisation. The id
    -- is derived from the provider's id by its adapter, and request identities are unique in
    -- authorization_requests.
);

-- Every decision ever returned, keyed by the provider's request identity. A retry of the same
-- request finds its row and gets the same answer; declines are stored too.
CREATE TABLE authorization_requests (
    -- arrival order (history, batch scans); the request identity below is the key
    id               bigint GENERATED ALWAYS AS IDENTITY,
    provider         text NOT NULL,
    provider_id      text NOT NULL,
    sequence         integer NOT NULL CHECK (sequence >= 0),
    authorization_id text NOT NULL REFERENCES authorizations (id),
    kind             text NOT NULL CHECK (kind IN ('initial', 'incremental')),
    amount           bigint NOT NULL CHECK (amount > 0),
    currency         char(3) NOT NULL,
    partial_allowed  boolean NOT NULL,
    decision         text NOT NULL CHECK (decision IN ('approve', 'decline')),
    approved_amount  bigint NOT NULL CHECK (approved_amount >= 0 AND approved_amount <= amount),
    reason           text NOT NULL,
    stand_in         boolean NOT NULL,
    policy_version   integer,
    -- the velocity counters the decision saw, and the buckets it incremented
    counters         jsonb,
    request_hash     text NOT NULL,
    -- whether the attempt that recorded this decision had counted it in the velocity counters
    -- (a retry that overtook the counting attempt records it uncounted); the counting attempt,
    -- replayed, uses it to settle the counters exactly once
    counted          boolean NOT NULL DEFAULT false,
    decided_at       timestamptz NOT NULL,
    PRIMARY KEY (provider, provider_id, sequence),
    CHECK ((decision = 'approve') = (approved_amount > 0))
);
CREATE INDEX authorization_requests_authorization ON authorization_requests (authorization_id);

CREATE TABLE holds (
    id          text PRIMARY KEY REFERENCES authorizations (id),
    account_id  text NOT NULL,
    currency    char(3) NOT NULL,
    state       text NOT NULL CHECK (state IN ('open', 'closed', 'expired')),
    authorized  bigint NOT NULL CHECK (authorized >= 0),
    posted      bigint NOT NULL DEFAULT 0 CHECK (posted >= 0),
    over_posted bigint NOT NULL DEFAULT 0 CHECK (over_posted >= 0 AND over_posted <= posted),
    released    bigint NOT NULL DEFAULT 0 CHECK (released >= 0),
    remaining   bigint NOT NULL CHECK (remaining >= 0),
    expires_at  timestamptz NOT NULL,
    created_at  timestamptz NOT NULL,
    updated_at  timestamptz NOT NULL,
    FOREIGN KEY (account_id, currency) REFERENCES accounts (id, currency),
    -- the parts of a hold always add up
    CHECK (authorized = (posted - over_posted) + released + remaining),
    CHECK (state = 'open' OR remaining = 0)
);
CREATE INDEX holds_open_expiry ON holds (expires_at) WHERE state = 'open';

-- Decline reasons in their fixed order of precedence: when several apply, the lowest rank wins.
CREATE FUNCTION hf_reason_rank(p_reason text) RETURNS integer
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT CASE p_reason
        WHEN 'invalid_card' THEN 1
        WHEN 'card_restricted' THEN 2
        WHEN 'card_expired' THEN 3
        WHEN 'do_not_honor' THEN 4
        WHEN 'not_permitted' THEN 5
        WHEN 'suspected_fraud' THEN 6
        WHEN 'amount_limit_exceeded' THEN 7
        WHEN 'count_limit_exceeded' THEN 8
        WHEN 'insufficient_funds' THEN 9
        ELSE 100 END
$$;

CREATE FUNCTION hf_first_reason(a text, b text) RETURNS text
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT CASE WHEN a IS NULL THEN b WHEN b IS NULL THEN a
                WHEN hf_reason_rank(b) < hf_reason_rank(a) THEN b ELSE a END
$$;

-- Account rows are locked FOR NO KEY UPDATE everywhere: it serialises every writer of a balance
-- (it conflicts with itself and with UPDATE) but not the KEY SHARE locks that foreign-key checks
-- take when another transaction inserts a row referencing the account (a hold, a posting, a
-- sweep's journal entry), so those never make an authorisation wait.
--
-- The authorisation ledger operation. One call, one round trip: lock (hold, then account), check
-- for a replay, decide funds, record the decision, place or raise the hold. Only after this
-- commits may the caller approve.
--
-- p_rule_reason is the verdict of the Redis policy check (NULL = all rules passed). PostgreSQL
-- re-checks card state and expiry itself, so a freeze is honoured even by a stale cache.
--
-- status: 'new' (decided now), 'replay' (stored decision returned), 'conflict' (same request
-- identity with another body: nothing stored, caller answers 'duplicate').
CREATE FUNCTION hf_authorize(
    p_provider text, p_provider_id text, p_sequence integer, p_authorization_id text,
    p_parent_id text, p_card_id text, p_amount bigint, p_currency text, p_partial boolean,
    p_rule_reason text, p_policy_version integer, p_counters jsonb, p_request_hash text,
    p_now timestamptz, p_hold_expires timestamptz, p_merchant_id text, p_merchant_name text,
    p_mcc text, p_country text, p_channel text, p_stand_in boolean, p_stand_in_cap bigint,
    p_counted boolean)
RETURNS TABLE (status text, authorization_id text, decision text, approved_amount bigint,
               reason text, stand_in boolean, counted boolean)
LANGUAGE plpgsql AS $$
DECLARE
    -- the card and its account, read (and the account locked) in one statement
    v_card_found boolean := false;
    v_card_state text;
    v_card_expires text;
    v_account text;
    v_currency text;
    v_posted bigint;
    v_held bigint;
    v_overdraft bigint;
    parent authorizations%ROWTYPE;
    hold holds%ROWTYPE;
    prior authorization_requests%ROWTYPE;
    v_auth_id text := COALESCE(p_parent_id, p_authorization_id);
    v_incremental boolean := p_parent_id IS NOT NULL;
    v_reason text := p_rule_reason;
    v_available bigint;
    v_approved bigint := 0;
BEGIN
    IF v_incremental THEN
        -- lock order everywhere: the hold, then the account
        SELECT * INTO hold FROM holds h WHERE h.id = v_auth_id FOR UPDATE;
    END IF;
    SELECT true, c.state, c.expires, a.id, a.currency, a.posted, a.held, a.overdraft_limit
      INTO v_card_found, v_card_state, v_card_expires, v_account, v_currency, v_posted, v_held,
           v_overdraft
      FROM cards c JOIN accounts a ON a.id = c.account_id
     WHERE c.id = p_card_id
       FOR NO KEY UPDATE OF a;

    -- replay check after the locks: a concurrent retry of this request waits on them above and
    -- then finds the first one's committed decision here
    SELECT * INTO prior FROM authorization_requests r
     WHERE r.provider = p_provider AND r.provider_id = p_provider_id AND r.sequence = p_sequence;
    IF FOUND THEN
        IF prior.request_hash <> p_request_hash THEN
            RETURN QUERY SELECT 'conflict'::text, prior.authorization_id, 'decline'::text,
                0::bigint, 'duplicate'::text, p_stand_in, false;
        ELSE
            RETURN QUERY SELECT 'replay'::text, prior.authorization_id, prior.decision,
                prior.approved_amount, prior.reason, prior.stand_in, prior.counted;
        END IF;
        RETURN;
    END IF;

    IF v_incremental THEN
        SELECT * INTO parent FROM authorizations a WHERE a.id = v_auth_id;
        IF NOT FOUND OR parent.provider <> p_provider OR parent.card_id <> p_card_id THEN
            -- an incremental must name an authorisation of this provider and card; without one
            -- it is declined and recorded as an authorisation of its own, so a retry gets the
            -- same answer
            v_reason := hf_first_reason(v_reason, 'do_not_honor');
            v_incremental := false;
            v_auth_id := p_authorization_id;
        END IF;
    END IF;
    IF NOT v_incremental AND EXISTS (SELECT 1 FROM authorizations a WHERE a.id = v_auth_id) THEN
        RETURN QUERY SELECT 'conflict'::text, v_auth_id, 'decline'::text, 0::bigint,
            'duplicate'::text, p_stand_in, false;
        RETURN;
    END IF;

    IF NOT coalesce(v_card_found, false) THEN
        v_reason := 'invalid_card';
    ELSIF v_card_state = 'terminated' THEN
        v_reason := hf_first_reason(v_reason, 'invalid_card');
    ELSIF v_card_state = 'frozen' THEN
        v_reason := hf_first_reason(v_reason, 'card_restricted');
    ELSIF v_card_expires IS NOT NULL
          AND to_char(p_now AT TIME ZONE 'UTC', 'YYYY-MM') > v_card_expires THEN
        v_reason := hf_first_reason(v_reason, 'card_expired');
    END IF;
    IF v_reason IS NULL AND v_currency <> p_currency THEN
        v_reason := 'do_not_honor';
    END IF;
    IF v_reason IS NULL AND v_incremental AND (hold.id IS NULL OR hold.state <> 'open') THEN
        v_reason := 'do_not_honor';
    END IF;
    IF v_reason IS NULL AND p_stand_in AND p_amount > p_stand_in_cap THEN
        v_reason := 'amount_limit_exceeded';
    END IF;
    IF v_reason IS NULL THEN
        v_available := v_posted - v_held + v_overdraft;
        IF v_available >= p_amount THEN
            v_approved := p_amount;
            v_reason := 'approved';
        ELSIF p_partial AND v_available > 0 THEN
            v_approved := v_available;
            v_reason := 'partial_approval';
        ELSE
            v_reason := 'insufficient_funds';
        END IF;
    END IF;

    IF v_incremental THEN
        UPDATE authorizations a
           SET requested_amount = a.requested_amount + p_amount,
               approved_amount = a.approved_amount + v_approved, updated_at = p_now
         WHERE a.id = v_auth_id;
    ELSE
        INSERT INTO authorizations (id, provider, provider_id, card_id, account_id, currency,
            state, requested_amount, approved_amount, merchant_id, merchant_name, mcc, country,
            channel, created_at, updated_at)
        VALUES (v_auth_id, p_provider, p_provider_id, p_card_id, v_account, p_currency,
            CASE WHEN v_approved > 0 THEN 'pending' ELSE 'declined' END, p_amount, v_approved,
            p_merchant_id, p_merchant_name, p_mcc, p_country, p_channel, p_now, p_now);
    END IF;

    INSERT INTO authorization_requests (provider, provider_id, sequence, authorization_id, kind,
        amount, currency, partial_allowed, decision, approved_amount, reason, stand_in,
        policy_version, counters, request_hash, counted, decided_at)
    VALUES (p_provider, p_provider_id, p_sequence, v_auth_id,
        CASE WHEN p_parent_id IS NULL THEN 'initial' ELSE 'incremental' END, p_amount, p_currency,
        p_partial, CASE WHEN v_approved > 0 THEN 'approve' ELSE 'decline' END, v_approved,
        v_reason, p_stand_in, p_policy_version, p_counters, p_request_hash, p_counted, p_now);

    IF v_approved > 0 THEN
        IF v_incremental THEN
            UPDATE holds h
               SET authorized = h.authorized + v_approved, remaining = h.remaining + v_approved,
                   expires_at = greatest(h.expires_at, p_hold_expires), updated_at = p_now
             WHERE h.id = v_auth_id;
        ELSE
            INSERT INTO holds (id, account_id, currency, state, authorized, remaining,
                expires_at, created_at, updated_at)
            VALUES (v_auth_id, v_account, v_currency, 'open', v_approved, v_approved,
                p_hold_expires, p_now, p_now);
        END IF;
        UPDATE accounts a SET held = a.held + v_approved, updated_at = p_now
         WHERE a.id = v_account;
    END IF;

    RETURN QUERY SELECT 'new'::text, v_auth_id,
        CASE WHEN v_approved > 0 THEN 'approve' ELSE 'decline' END, v_approved, v_reason,
        p_stand_in, p_counted;
END $$;
