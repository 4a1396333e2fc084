-- The initial request's decision lives on its authorisation's row.
--
-- Every new authorisation wrote two rows: the authorisation (which since 0011 carries its hold)
-- and the record of the request that created it, with the same identity, amount, currency and
-- time. The second row cost a statement, a heap tuple, two index entries (its identity, its
-- authorisation), a number from its identity column's sequence, a foreign-key check (a query
-- of the authorisation row inserted just before it) and its row check. A logic-free writer of
-- the hot path's rows measured p50 1.60 / p99 6.17 ms at 1,000/s with the request row and
-- 1.48 / 4.86 ms without it (benchmarks/README.md, "Session 16"). Now the initial request's
-- own columns are columns of `authorizations` (request_*, all NULL on an authorisation no
-- initial request created: an advice, or an incremental that named no authorisation), and
-- the table keeps only the other requests, as `followup_requests`: incrementals, advices and
-- those declined incrementals. `authorization_requests` is a view of both with the old columns,
-- so its readers keep their SQL:
--   * the initial request's `id` (arrival order in the old table) is NULL: it comes first among
--     its authorisation's requests, and no reader needs more;
--   * its `decision` is derived from its approved amount (the old row check required them to
--     agree), its `decided_at` is the authorisation's created_at (they were always equal);
--   * INSERT INTO authorization_requests records a follow-up request (an INSTEAD OF trigger);
--     UPDATE changes the row where it lives, under the old row check's rules and names.
--
-- One rule had a single key and now spans two: a request identity (provider, provider_id,
-- sequence) is recorded once. Each table keeps it unique on its own; across them, every writer
-- of a request takes a transaction advisory lock on the identity (hf_request_lock) after its
-- row locks and before it looks for a recorded decision, so of two requests with one identity
-- (an initial and an incremental sent at once under one request id) the second finds the
-- first's decision (the old primary key made the second wait, then fail with unique_violation
-- and be decided again alone). `holdfast verify` checks it ("one_decision").

ALTER TABLE authorizations
    ADD COLUMN request_sequence       integer,
    ADD COLUMN request_amount         bigint,
    ADD COLUMN request_partial        boolean,
    ADD COLUMN request_approved       bigint,
    ADD COLUMN request_reason         text,
    ADD COLUMN request_stand_in       boolean,
    ADD COLUMN request_policy_version integer,
    ADD COLUMN request_counters       jsonb,
    ADD COLUMN request_hash           text,
    ADD COLUMN request_counted        boolean;

DO $$
DECLARE
    v_twice text;
BEGIN
    SELECT r.authorization_id INTO v_twice FROM authorization_requests r
     WHERE r.kind = 'initial' GROUP BY r.authorization_id HAVING count(*) > 1 LIMIT 1;
    IF FOUND THEN
        RAISE EXCEPTION 'authorisation % has more than one initial request: repair it before '
                        'this migration', v_twice;
    END IF;
END $$;

-- an initial request moves onto its authorisation when it created it (same provider and id)
UPDATE authorizations a
   SET request_sequence = r.sequence, request_amount = r.amount,
       request_partial = r.partial_allowed, request_approved = r.approved_amount,
       request_reason = r.reason, request_stand_in = r.stand_in,
       request_policy_version = r.policy_version, request_counters = r.counters,
       request_hash = r.request_hash, request_counted = r.counted
  FROM authorization_requests r
 WHERE r.kind = 'initial' AND r.authorization_id = a.id AND r.provider = a.provider
   AND r.provider_id = a.provider_id AND r.currency = a.currency AND r.decided_at = a.created_at;

DELETE FROM authorization_requests r
 USING authorizations a
 WHERE r.kind = 'initial' AND r.authorization_id = a.id AND a.request_sequence IS NOT NULL;

ALTER TABLE authorization_requests RENAME TO followup_requests;

-- The initial request's rules are the old row's, in the table's one check function (an inline
-- CHECK would be parsed afresh by every statement that writes the table: 0014); a refusal is
-- named authorizations_request_ok.
CREATE FUNCTION hf_authorization_row_ok(
    p_state text, p_requested_amount bigint, p_approved_amount bigint, p_account_id text,
    p_hold_state text, p_hold_authorized bigint, p_hold_posted bigint,
    p_hold_over_posted bigint, p_hold_released bigint, p_hold_remaining bigint,
    p_hold_expires_at timestamptz, p_hold_created_at timestamptz,
    p_hold_updated_at timestamptz, p_hold_forced boolean, p_request_sequence integer,
    p_request_amount bigint, p_request_partial boolean, p_request_approved bigint,
    p_request_reason text, p_request_stand_in boolean, p_request_hash text,
    p_request_counted boolean)
RETURNS boolean LANGUAGE plpgsql IMMUTABLE AS $$
BEGIN
    -- 0014's rules, as they were (a call of its function would cost a statement per row)
    IF NOT (p_state IN ('pending', 'declined', 'partially_reversed', 'reversed', 'cleared',
                        'expired')) THEN
        PERFORM hf_refuse_row('authorizations', 'authorizations_state_check');
    END IF;
    IF NOT (p_requested_amount >= 0) THEN
        PERFORM hf_refuse_row('authorizations', 'authorizations_requested_amount_check');
    END IF;
    IF NOT (p_approved_amount >= 0) THEN
        PERFORM hf_refuse_row('authorizations', 'authorizations_approved_amount_check');
    END IF;
    IF NOT (p_hold_state IN ('open', 'closed', 'expired')) THEN
        PERFORM hf_refuse_row('authorizations', 'authorizations_hold_state_check');
    END IF;
    IF NOT (p_hold_authorized >= 0) THEN
        PERFORM hf_refuse_row('authorizations', 'authorizations_hold_authorized_check');
    END IF;
    IF NOT (p_hold_posted >= 0) THEN
        PERFORM hf_refuse_row('authorizations', 'authorizations_hold_posted_check');
    END IF;
    IF NOT (p_hold_released >= 0) THEN
        PERFORM hf_refuse_row('authorizations', 'authorizations_hold_released_check');
    END IF;
    IF NOT (p_hold_remaining >= 0) THEN
        PERFORM hf_refuse_row('authorizations', 'authorizations_hold_remaining_check');
    END IF;
    -- a hold is all there or not at all, and always on an account
    IF NOT (num_nulls(p_hold_state, p_hold_authorized, p_hold_posted, p_hold_over_posted,
                      p_hold_released, p_hold_remaining, p_hold_expires_at, p_hold_created_at,
                      p_hold_updated_at, p_hold_forced) IN (0, 10)
            AND (p_hold_state IS NULL OR p_account_id IS NOT NULL)) THEN
        PERFORM hf_refuse_row('authorizations', 'authorizations_hold_whole');
    END IF;
    -- its parts add up; only an open hold still holds anything
    IF NOT (p_hold_authorized = p_hold_posted - p_hold_over_posted + p_hold_released
                                + p_hold_remaining
            AND p_hold_over_posted >= 0 AND p_hold_over_posted <= p_hold_posted
            AND (p_hold_state = 'open' OR p_hold_remaining = 0)) THEN
        PERFORM hf_refuse_row('authorizations', 'authorizations_hold_parts');
    END IF;
    -- the request that created it is all there or not at all, and keeps the old row's rules
    IF NOT (num_nulls(p_request_sequence, p_request_amount, p_request_partial,
                      p_request_approved, p_request_reason, p_request_stand_in, p_request_hash,
                      p_request_counted) IN (0, 8)
            AND p_request_sequence >= 0 AND p_request_amount > 0
            AND p_request_approved >= 0 AND p_request_approved <= p_request_amount) THEN
        PERFORM hf_refuse_row('authorizations', 'authorizations_request_ok');
    END IF;
    RETURN true;
END $$;

ALTER TABLE authorizations
    DROP CONSTRAINT authorizations_row_ok,
    ADD CONSTRAINT authorizations_row_ok CHECK (
        hf_authorization_row_ok(state, requested_amount, approved_amount, account_id,
            hold_state, hold_authorized, hold_posted, hold_over_posted, hold_released,
            hold_remaining, hold_expires_at, hold_created_at, hold_updated_at, hold_forced,
            request_sequence, request_amount, request_partial, request_approved,
            request_reason, request_stand_in, request_hash, request_counted));
DROP FUNCTION hf_authorization_row_ok(text, bigint, bigint, text, text, bigint, bigint, bigint,
    bigint, bigint, timestamptz, timestamptz, timestamptz, boolean);

-- the initial request's identity (replaces the old table's primary key for these rows)
CREATE UNIQUE INDEX authorizations_request
    ON authorizations (provider, provider_id, request_sequence);
-- stand-in approvals still to be counted in the velocity counters (authz/standin.py)
CREATE INDEX authorizations_request_uncounted ON authorizations (created_at)
    WHERE request_stand_in AND request_approved > 0 AND NOT request_counted;

-- The lock every writer of a request takes on its identity (two-int keys: a space apart from
-- the one-bigint advisory locks of migrations and inbound credits). A hash collision only
-- makes two requests wait for each other.
CREATE FUNCTION hf_request_lock(p_provider text, p_provider_id text, p_sequence integer)
RETURNS void LANGUAGE sql AS $$
    SELECT pg_advisory_xact_lock(hashtext(p_provider || '/' || p_provider_id), p_sequence)
$$;

CREATE VIEW authorization_requests AS
SELECT NULL::bigint AS id, a.provider, a.provider_id, a.request_sequence AS sequence,
       a.id AS authorization_id, 'initial'::text AS kind, a.request_amount AS amount,
       a.currency, a.request_partial AS partial_allowed,
       CASE WHEN a.request_approved > 0 THEN 'approve' ELSE 'decline' END AS decision,
       a.request_approved AS approved_amount, a.request_reason AS reason,
       a.request_stand_in AS stand_in, a.request_policy_version AS policy_version,
       a.request_counters AS counters, a.request_hash, a.request_counted AS counted,
       a.created_at AS decided_at
  FROM authorizations a
 WHERE a.request_sequence IS NOT NULL
UNION ALL
SELECT f.id, f.provider, f.provider_id, f.sequence, f.authorization_id, f.kind, f.amount,
       f.currency, f.partial_allowed, f.decision, f.approved_amount, f.reason, f.stand_in,
       f.policy_version, f.counters, f.request_hash, f.counted, f.decided_at
  FROM followup_requests f;

-- INSERT INTO authorization_requests: a follow-up request (any kind; the hot path writes an
-- initial request in its authorisation's own INSERT). Its identity must not be an initial
-- request's (the old primary key's error).
CREATE FUNCTION hf_record_request() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM hf_request_lock(NEW.provider, NEW.provider_id, NEW.sequence);
    IF EXISTS (SELECT 1 FROM authorizations a
                WHERE a.provider = NEW.provider AND a.provider_id = NEW.provider_id
                  AND a.request_sequence = NEW.sequence) THEN
        RAISE EXCEPTION 'request % % #% is recorded already', NEW.provider, NEW.provider_id,
            NEW.sequence USING ERRCODE = 'unique_violation';
    END IF;
    INSERT INTO followup_requests (provider, provider_id, sequence, authorization_id, kind,
        amount, currency, partial_allowed, decision, approved_amount, reason, stand_in,
        policy_version, counters, request_hash, counted, decided_at)
    VALUES (NEW.provider, NEW.provider_id, NEW.sequence, NEW.authorization_id, NEW.kind,
        NEW.amount, NEW.currency, NEW.partial_allowed, NEW.decision, NEW.approved_amount,
        NEW.reason, NEW.stand_in, NEW.policy_version, NEW.counters, NEW.request_hash,
        coalesce(NEW.counted, false), NEW.decided_at)
    RETURNING id INTO NEW.id;
    RETURN NEW;
END $$;

CREATE TRIGGER authorization_requests_record INSTEAD OF INSERT ON authorization_requests
    FOR EACH ROW EXECUTE FUNCTION hf_record_request();

-- UPDATE authorization_requests: the row where it lives. An initial request keeps its kind,
-- identity, authorisation, currency and time (they are its authorisation's), and is held to
-- the old row check's rules under their old names.
CREATE FUNCTION hf_change_request() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF OLD.id IS NOT NULL THEN
        UPDATE followup_requests
           SET provider = NEW.provider, provider_id = NEW.provider_id, sequence = NEW.sequence,
               authorization_id = NEW.authorization_id, kind = NEW.kind, amount = NEW.amount,
               currency = NEW.currency, partial_allowed = NEW.partial_allowed,
               decision = NEW.decision, approved_amount = NEW.approved_amount,
               reason = NEW.reason, stand_in = NEW.stand_in,
               policy_version = NEW.policy_version, counters = NEW.counters,
               request_hash = NEW.request_hash, counted = NEW.counted,
               decided_at = NEW.decided_at
         WHERE id = OLD.id;
        RETURN NEW;
    END IF;
    PERFORM hf_authorization_request_row_ok(NEW.sequence, NEW.kind, NEW.amount, NEW.decision,
                                            NEW.approved_amount);
    IF (NEW.id, NEW.provider, NEW.provider_id, NEW.authorization_id, NEW.kind, NEW.currency,
        NEW.decided_at) IS DISTINCT FROM
       (OLD.id, OLD.provider, OLD.provider_id, OLD.authorization_id, OLD.kind, OLD.currency,
        OLD.decided_at) THEN
        RAISE EXCEPTION 'request % % #%: an initial request''s kind, identity, authorisation, '
                        'currency and time are its authorisation''s', OLD.provider,
            OLD.provider_id, OLD.sequence USING ERRCODE = 'object_not_in_prerequisite_state';
    END IF;
    UPDATE authorizations
       SET request_sequence = NEW.sequence, request_amount = NEW.amount,
           request_partial = NEW.partial_allowed, request_approved = NEW.approved_amount,
           request_reason = NEW.reason, request_stand_in = NEW.stand_in,
           request_policy_version = NEW.policy_version, request_counters = NEW.counters,
           request_hash = NEW.request_hash, request_counted = NEW.counted
     WHERE id = OLD.authorization_id;
    RETURN NEW;
END $$;

CREATE TRIGGER authorization_requests_change INSTEAD OF UPDATE ON authorization_requests
    FOR EACH ROW EXECUTE FUNCTION hf_change_request();

-- As 0012, but a new authorisation's INSERT carries the request that created it, and the
-- identity is locked before the replay check.
CREATE OR REPLACE FUNCTION hf_authorize(
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
    v_card_found boolean := false;
    v_card_state text;
    v_card_expires text;
    v_account text;
    v_currency text;
    v_posted bigint;
    v_held bigint;
    v_overdraft bigint;
    parent authorizations%ROWTYPE;
    prior authorization_requests%ROWTYPE;
    v_auth_id text := COALESCE(p_parent_id, p_authorization_id);
    v_incremental boolean := p_parent_id IS NOT NULL;
    v_reason text := p_rule_reason;
    v_available bigint;
    v_approved bigint := 0;
BEGIN
    IF v_incremental THEN
        -- lock order everywhere: the hold (its authorisation's row), then the account
        SELECT * INTO parent FROM authorizations a WHERE a.id = v_auth_id FOR UPDATE;
    END IF;
    SELECT true, c.state, c.expires, a.id, a.currency, a.posted, a.held, a.overdraft_limit
      INTO v_card_found, v_card_state, v_card_expires, v_account, v_currency, v_posted, v_held,
           v_overdraft
      FROM cards c JOIN accounts a ON a.id = c.account_id
     WHERE c.id = p_card_id
       FOR NO KEY UPDATE OF a;
    PERFORM hf_request_lock(p_provider, p_provider_id, p_sequence);

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

    IF v_incremental AND (parent.id IS NULL OR parent.provider <> p_provider
                          OR parent.card_id <> p_card_id) THEN
        -- an incremental must name an authorisation of this provider and card; without one it
        -- is declined and recorded as an authorisation of its own, so a retry gets the same
        -- answer
        v_reason := hf_first_reason(v_reason, 'do_not_honor');
        v_incremental := false;
        v_auth_id := p_authorization_id;
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
    IF v_reason IS NULL AND v_incremental AND parent.hold_state IS DISTINCT FROM 'open' THEN
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
        -- the authorisation and its hold in one row update (v_approved > 0 only on an open hold)
        UPDATE authorizations a
           SET requested_amount = a.requested_amount + p_amount,
               approved_amount = a.approved_amount + v_approved, updated_at = p_now,
               hold_authorized = a.hold_authorized + v_approved,
               hold_remaining = a.hold_remaining + v_approved,
               hold_expires_at = CASE WHEN v_approved > 0
                                      THEN greatest(a.hold_expires_at, p_hold_expires)
                                      ELSE a.hold_expires_at END,
               hold_updated_at = CASE WHEN v_approved > 0 THEN p_now ELSE a.hold_updated_at END
         WHERE a.id = v_auth_id;
    ELSIF p_parent_id IS NOT NULL THEN
        -- a declined incremental that named no authorisation of its card: an authorisation of
        -- its own, its request recorded among the follow-ups (it is not an initial request)
        INSERT INTO authorizations (id, provider, provider_id, card_id, account_id, currency,
            state, requested_amount, approved_amount, merchant_id, merchant_name, mcc, country,
            channel, created_at, updated_at)
        VALUES (v_auth_id, p_provider, p_provider_id, p_card_id, v_account, p_currency,
            'declined', p_amount, 0, p_merchant_id, p_merchant_name, p_mcc, p_country,
            p_channel, p_now, p_now);
    ELSE
        INSERT INTO authorizations (id, provider, provider_id, card_id, account_id, currency,
            state, requested_amount, approved_amount, merchant_id, merchant_name, mcc, country,
            channel, created_at, updated_at, hold_state, hold_authorized, hold_posted,
            hold_over_posted, hold_released, hold_remaining, hold_expires_at, hold_created_at,
            hold_updated_at, hold_forced, request_sequence, request_amount, request_partial,
            request_approved, request_reason, request_stand_in, request_policy_version,
            request_counters, request_hash, request_counted)
        VALUES (v_auth_id, p_provider, p_provider_id, p_card_id, v_account, p_currency,
            CASE WHEN v_approved > 0 THEN 'pending' ELSE 'declined' END, p_amount, v_approved,
            p_merchant_id, p_merchant_name, p_mcc, p_country, p_channel, p_now, p_now,
            CASE WHEN v_approved > 0 THEN 'open' END,
            CASE WHEN v_approved > 0 THEN v_approved END,
            CASE WHEN v_approved > 0 THEN 0 END, CASE WHEN v_approved > 0 THEN 0 END,
            CASE WHEN v_approved > 0 THEN 0 END,
            CASE WHEN v_approved > 0 THEN v_approved END,
            CASE WHEN v_approved = 0 THEN NULL
                 WHEN p_hold_expires >= clock_timestamp() + interval '1 day' THEN p_hold_expires
                 ELSE hf_hold_expiry_floor_at(p_hold_expires) END,
            CASE WHEN v_approved > 0 THEN p_now END, CASE WHEN v_approved > 0 THEN p_now END,
            CASE WHEN v_approved > 0 THEN false END,
            p_sequence, p_amount, p_partial, v_approved, v_reason, p_stand_in,
            p_policy_version, p_counters, p_request_hash, p_counted);
    END IF;

    IF p_parent_id IS NOT NULL THEN
        INSERT INTO followup_requests (provider, provider_id, sequence, authorization_id, kind,
            amount, currency, partial_allowed, decision, approved_amount, reason, stand_in,
            policy_version, counters, request_hash, counted, decided_at)
        VALUES (p_provider, p_provider_id, p_sequence, v_auth_id, 'incremental', p_amount,
            p_currency, p_partial, CASE WHEN v_approved > 0 THEN 'approve' ELSE 'decline' END,
            v_approved, v_reason, p_stand_in, p_policy_version, p_counters, p_request_hash,
            p_counted, p_now);
    END IF;

    IF v_approved > 0 THEN
        UPDATE accounts a SET held = a.held + v_approved, updated_at = p_now
         WHERE a.id = v_account;
    END IF;

    RETURN QUERY SELECT 'new'::text, v_auth_id,
        CASE WHEN v_approved > 0 THEN 'approve' ELSE 'decline' END, v_approved, v_reason,
        p_stand_in, p_counted;
END $$;

-- As 0016, but the new authorisations' INSERT carries their requests (no second INSERT), and
-- the batch's identities are locked, in order, after its accounts and before the replay check.
CREATE OR REPLACE FUNCTION hf_authorize_batch(p_requests hf_authorize_request[], p_stand_in_cap bigint)
RETURNS TABLE (idx integer, status text, authorization_id text, decision text,
               approved_amount bigint, reason text, stand_in boolean, counted boolean)
LANGUAGE plpgsql
-- as 0015: plans made once per connection, never a table scan
SET plan_cache_mode = force_generic_plan SET enable_seqscan = off SET enable_hashjoin = off
SET enable_mergejoin = off
AS $$
DECLARE
    n integer := cardinality(p_requests);
    v_cards text[];
    v_parents text[];
    -- the batch's accounts (any order); a_held is the running held, a_now the time of the last
    -- approval on the account (its updated_at)
    a_id text[];
    a_currency text[];
    a_posted bigint[];
    a_held bigint[];
    a_held_before bigint[];
    a_overdraft bigint[];
    a_now timestamptz[];
    r record;
    i integer := 0;
    -- the answers, and each request's account (its place in a_*)
    o_status text[];
    o_authorization_id text[];
    o_approved bigint[];
    o_reason text[];
    o_stand_in boolean[];
    o_counted boolean[];
    o_account integer[];
    k integer;
    q hf_authorize_request;
    v_answer record;
    v_reason text;
    v_available bigint;
BEGIN
    IF n IS NULL OR n = 0 THEN
        RETURN;
    END IF;
    -- the cards (to lock their accounts) and the incrementals' parents, in any order
    SELECT array_agg(u.card_id), array_agg(u.parent_id) FILTER (WHERE u.parent_id IS NOT NULL)
      INTO v_cards, v_parents
      FROM unnest(p_requests) u;

    -- an incremental's hold is locked before any account, as every writer does
    IF v_parents IS NOT NULL THEN
        PERFORM 1 FROM holds h WHERE h.id = ANY (v_parents) ORDER BY h.id FOR UPDATE;
    END IF;

    -- 1. locked in id order; FOR NO KEY UPDATE returns each row as it is once locked, not as
    -- the statement's snapshot saw it
    SELECT array_agg(a.id), array_agg(a.currency), array_agg(a.posted), array_agg(a.held),
           array_agg(a.overdraft_limit)
      INTO a_id, a_currency, a_posted, a_held, a_overdraft
      FROM (SELECT x.id, x.currency, x.posted, x.held, x.overdraft_limit FROM accounts x
             WHERE x.id IN (SELECT c.account_id FROM cards c WHERE c.id = ANY (v_cards))
             ORDER BY x.id FOR NO KEY UPDATE) a;
    -- the batch's request identities, after the accounts and in the order of their keys (so
    -- two batches sharing two of them cannot each wait for the other)
    PERFORM hf_request_lock(k.provider, k.provider_id, k.sequence)
       FROM (SELECT DISTINCT u.provider, u.provider_id, u.sequence FROM unnest(p_requests) u) k
      ORDER BY hashtext(k.provider || '/' || k.provider_id), k.sequence;
    a_held_before := a_held;
    a_now := array_fill(NULL::timestamptz, ARRAY[coalesce(cardinality(a_id), 0)]);

    o_status := array_fill('new'::text, ARRAY[n]);
    o_approved := array_fill(0::bigint, ARRAY[n]);
    o_reason := array_fill(NULL::text, ARRAY[n]);
    o_account := array_fill(NULL::integer, ARRAY[n]);

    -- 2, 3. after the locks: a concurrent retry of a request here waited on them in step 1 and
    -- now finds the first one's committed decision. Then hf_authorize's rules, in its order.
    FOR r IN
        SELECT u.ordinality AS i, u.authorization_id, u.parent_id, u.amount, u.currency,
               u.partial_allowed, u.rule_reason, u.request_hash, u.now, u.stand_in, u.counted,
               c.state AS card_state, c.expires AS card_expires,
               array_position(a_id, c.account_id) AS account,
               -- a recorded request with its identity: an initial one (on its authorisation)
               -- or a follow-up; the tables, not the view, so each is one index probe
               coalesce(pa.id, pf.authorization_id) AS prior_id,
               coalesce(pa.request_hash, pf.request_hash) AS prior_hash,
               coalesce(pa.request_approved, pf.approved_amount) AS prior_approved,
               coalesce(pa.request_reason, pf.reason) AS prior_reason,
               coalesce(pa.request_stand_in, pf.stand_in) AS prior_stand_in,
               coalesce(pa.request_counted, pf.counted) AS prior_counted,
               x.id IS NOT NULL AS taken
          FROM unnest(p_requests) WITH ORDINALITY u
          LEFT JOIN cards c ON c.id = u.card_id
          LEFT JOIN authorizations pa
                 ON pa.provider = u.provider AND pa.provider_id = u.provider_id
                AND pa.request_sequence = u.sequence
          LEFT JOIN followup_requests pf
                 ON pf.provider = u.provider AND pf.provider_id = u.provider_id
                AND pf.sequence = u.sequence
          LEFT JOIN authorizations x ON x.id = u.authorization_id
         ORDER BY u.ordinality
    LOOP
        i := i + 1;
        IF r.i <> i THEN  -- cannot happen (each request joins at most one row of each table)
            RAISE EXCEPTION 'hf_authorize_batch: request % read as %', i, r.i;
        END IF;
        o_authorization_id[i] := r.authorization_id;
        o_stand_in[i] := r.stand_in;
        o_counted[i] := r.counted;
        IF r.parent_id IS NOT NULL THEN
            o_status[i] := 'incremental';  -- decided after the writes below
            CONTINUE;
        END IF;
        IF r.prior_id IS NOT NULL THEN
            o_authorization_id[i] := r.prior_id;
            IF r.prior_hash <> r.request_hash THEN
                o_status[i] := 'conflict';
                o_reason[i] := 'duplicate';
                o_counted[i] := false;
            ELSE
                o_status[i] := 'replay';
                o_approved[i] := r.prior_approved;
                o_reason[i] := r.prior_reason;
                o_stand_in[i] := r.prior_stand_in;
                o_counted[i] := r.prior_counted;
            END IF;
            CONTINUE;
        END IF;
        IF r.taken THEN
            o_status[i] := 'conflict';
            o_reason[i] := 'duplicate';
            o_counted[i] := false;
            CONTINUE;
        END IF;

        k := r.account;
        o_account[i] := k;
        v_reason := r.rule_reason;
        IF r.card_state IS NULL THEN
            v_reason := 'invalid_card';
        ELSIF r.card_state = 'terminated' THEN
            v_reason := hf_first_reason(v_reason, 'invalid_card');
        ELSIF r.card_state = 'frozen' THEN
            v_reason := hf_first_reason(v_reason, 'card_restricted');
        ELSIF r.card_expires IS NOT NULL
              AND to_char(r.now AT TIME ZONE 'UTC', 'YYYY-MM') > r.card_expires THEN
            v_reason := hf_first_reason(v_reason, 'card_expired');
        END IF;
        IF v_reason IS NULL AND a_currency[k] <> r.currency THEN
            v_reason := 'do_not_honor';
        END IF;
        IF v_reason IS NULL AND r.stand_in AND r.amount > p_stand_in_cap THEN
            v_reason := 'amount_limit_exceeded';
        END IF;
        IF v_reason IS NULL THEN
            v_available := a_posted[k] - a_held[k] + a_overdraft[k];
            IF v_available >= r.amount THEN
                o_approved[i] := r.amount;
                v_reason := 'approved';
            ELSIF r.partial_allowed AND v_available > 0 THEN
                o_approved[i] := v_available;
                v_reason := 'partial_approval';
            ELSE
                v_reason := 'insufficient_funds';
            END IF;
            IF o_approved[i] > 0 THEN
                a_held[k] := a_held[k] + o_approved[i];
                a_now[k] := r.now;
            END IF;
        END IF;
        o_reason[i] := v_reason;
    END LOOP;
    IF i <> n THEN
        RAISE EXCEPTION 'hf_authorize_batch: % requests read of %', i, n;
    END IF;

    -- 4. an approval's authorisation carries its hold; a decline's carries none; each carries
    -- the request that created it (5., its own INSERT before 0017, is gone)
    INSERT INTO authorizations (id, provider, provider_id, card_id, account_id, currency, state,
        requested_amount, approved_amount, merchant_id, merchant_name, mcc, country, channel,
        created_at, updated_at, hold_state, hold_authorized, hold_posted, hold_over_posted,
        hold_released, hold_remaining, hold_expires_at, hold_created_at, hold_updated_at,
        hold_forced, request_sequence, request_amount, request_partial, request_approved,
        request_reason, request_stand_in, request_policy_version, request_counters,
        request_hash, request_counted)
    SELECT u.authorization_id, u.provider, u.provider_id, u.card_id, a_id[u.account],
           u.currency, CASE WHEN u.approved > 0 THEN 'pending' ELSE 'declined' END, u.amount,
           u.approved, u.merchant_id, u.merchant_name, u.mcc, u.country, u.channel, u.now, u.now,
           CASE WHEN u.approved > 0 THEN 'open' END,
           CASE WHEN u.approved > 0 THEN u.approved END,
           CASE WHEN u.approved > 0 THEN 0 END, CASE WHEN u.approved > 0 THEN 0 END,
           CASE WHEN u.approved > 0 THEN 0 END,
           CASE WHEN u.approved > 0 THEN u.approved END,
           CASE WHEN u.approved = 0 THEN NULL
                WHEN u.hold_expires >= clock_timestamp() + interval '1 day' THEN u.hold_expires
                ELSE hf_hold_expiry_floor_at(u.hold_expires) END,
           CASE WHEN u.approved > 0 THEN u.now END, CASE WHEN u.approved > 0 THEN u.now END,
           CASE WHEN u.approved > 0 THEN false END,
           u.sequence, u.amount, u.partial_allowed, u.approved, u.reason, u.stand_in,
           u.policy_version, u.counters, u.request_hash, u.counted
      FROM (SELECT v.*, o_account[v.ordinality] AS account, o_approved[v.ordinality] AS approved,
                   o_reason[v.ordinality] AS reason
              FROM unnest(p_requests) WITH ORDINALITY v
             WHERE o_status[v.ordinality] = 'new') u
     ORDER BY u.ordinality;

    -- 6.
    UPDATE accounts a SET held = u.held, updated_at = u.now
      FROM unnest(a_id, a_held, a_held_before, a_now) u(id, held, held_before, now)
     WHERE a.id = u.id AND u.held <> u.held_before;

    -- the incrementals, one by one by hf_authorize (their holds and accounts are locked
    -- already); they see every hold placed above
    IF v_parents IS NOT NULL THEN
        FOR j IN 1 .. n LOOP
            q := p_requests[j];
            CONTINUE WHEN q.parent_id IS NULL;
            SELECT * INTO v_answer FROM hf_authorize(q.provider, q.provider_id, q.sequence,
                q.authorization_id, q.parent_id, q.card_id, q.amount, q.currency,
                q.partial_allowed, q.rule_reason, q.policy_version, q.counters,
                q.request_hash, q.now, q.hold_expires, q.merchant_id, q.merchant_name, q.mcc,
                q.country, q.channel, q.stand_in, p_stand_in_cap, q.counted);
            o_status[j] := v_answer.status;
            o_authorization_id[j] := v_answer.authorization_id;
            o_approved[j] := v_answer.approved_amount;
            o_reason[j] := v_answer.reason;
            o_stand_in[j] := v_answer.stand_in;
            o_counted[j] := v_answer.counted;
        END LOOP;
    END IF;

    -- 7. (a recorded request's decision is 'approve' exactly when its approved amount is
    -- positive: authorization_requests_row_ok, and the view's derivation for an initial one)
    RETURN QUERY SELECT u.i::integer, u.status, u.id,
           CASE WHEN u.approved > 0 THEN 'approve' ELSE 'decline' END, u.approved, u.reason,
           u.stand_in, u.counted
      FROM unnest(o_status, o_authorization_id, o_approved, o_reason, o_stand_in, o_counted)
           WITH ORDINALITY u(status, id, approved, reason, stand_in, counted, i);
END $$;

