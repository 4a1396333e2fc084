-- A batch of new authorisations decided in memory and written with one statement per table.
--
-- 0007's hf_authorize_batch called hf_authorize once per request: about eight SQL statements
-- each (its lock, two lookups, two inserts, the account update, the answer, the call itself),
-- and PostgreSQL pays a statement's fixed cost (executor start-up and shut-down, a plan-cache
-- lookup, a snapshot) every time; in a batch of 16 that cost was about a quarter of an
-- approval's PostgreSQL CPU (benchmarks/README.md, "Session 7"). Here a batch costs seven
-- statements whatever its size:
--   1. lock the batch's accounts in id order (the lock order of every writer) and read them;
--   2. read, per request, its card, any recorded request with its identity (a replay) and any
--      authorisation with its id (a conflict);
--   3. decide every request in arrival order in PL/pgSQL variables, an account's running
--      `held` carried from one request to the next (the second of two requests on an account
--      sees the first one's hold, as before);
--   4. one INSERT into authorizations, 5. one into authorization_requests, 6. one UPDATE of the
--      accounts whose `held` rose, 7. the answer.
-- The decision rules are hf_authorize's, in the same order; tests/test_authorize_batch_set.py
-- runs random batches through this and through hf_authorize_batch_each (0007's loop, kept
-- below as the reference) against the same data and requires the same answers and the same
-- rows.
--
-- Incrementals (3 % of the benchmark's traffic, so in most batches of 30 or more) are not
-- decided set-wise: their parent holds are locked first, before the accounts (the order every
-- writer follows), and each is decided by hf_authorize after the batch's new requests are
-- written, so it sees their holds (and a parent placed in the same batch). Every request of a
-- batch was in flight at once, so deciding its new requests before its incrementals is as
-- valid a serial order as their arrival. Two requests of one batch with one identity or one
-- authorisation id that would both be recorded make the batch fail with unique_violation,
-- writing nothing; the batcher (authz/batcher.py) never sends such a batch (a retry queued
-- with its first attempt waits for the next one, where it finds the first's row), and after a
-- batch fails it decides the requests one at a time.

-- 0007's hf_authorize_batch under another name, the reference the tests compare with; the
-- arrays' lengths are checked by its caller (hf_authorize_batch, below), not again here
CREATE FUNCTION hf_authorize_batch_each(
    p_provider text[], p_provider_id text[], p_sequence integer[], p_authorization_id text[],
    p_parent_id text[], p_card_id text[], p_amount bigint[], p_currency text[],
    p_partial boolean[], p_rule_reason text[], p_policy_version integer[], p_counters jsonb[],
    p_request_hash text[], p_now timestamptz[], p_hold_expires timestamptz[],
    p_merchant_id text[], p_merchant_name text[], p_mcc text[], p_country text[],
    p_channel text[], p_stand_in boolean[], p_stand_in_cap bigint, p_counted boolean[])
RETURNS TABLE (idx integer, status text, authorization_id text, decision text,
               approved_amount bigint, reason text, stand_in boolean, counted boolean)
LANGUAGE plpgsql AS $$
DECLARE
    n integer := cardinality(p_card_id);
BEGIN
    IF n IS NULL OR n = 0 THEN
        RETURN;
    END IF;
    PERFORM 1 FROM holds h WHERE h.id = ANY (p_parent_id) ORDER BY h.id FOR UPDATE;
    PERFORM 1 FROM accounts a
     WHERE a.id IN (SELECT c.account_id FROM cards c WHERE c.id = ANY (p_card_id))
     ORDER BY a.id FOR NO KEY UPDATE;

    FOR i IN 1 .. n LOOP
        RETURN QUERY SELECT i, r.status, r.authorization_id, r.decision, r.approved_amount,
                r.reason, r.stand_in, r.counted
            FROM hf_authorize(p_provider[i], p_provider_id[i], p_sequence[i],
                p_authorization_id[i], p_parent_id[i], p_card_id[i], p_amount[i],
                p_currency[i], p_partial[i], p_rule_reason[i], p_policy_version[i],
                p_counters[i], p_request_hash[i], p_now[i], p_hold_expires[i],
                p_merchant_id[i], p_merchant_name[i], p_mcc[i], p_country[i], p_channel[i],
                p_stand_in[i], p_stand_in_cap, p_counted[i]) r;
    END LOOP;
END $$;

CREATE OR REPLACE FUNCTION hf_authorize_batch(
    p_provider text[], p_provider_id text[], p_sequence integer[], p_authorization_id text[],
    p_parent_id text[], p_card_id text[], p_amount bigint[], p_currency text[],
    p_partial boolean[], p_rule_reason text[], p_policy_version integer[], p_counters jsonb[],
    p_request_hash text[], p_now timestamptz[], p_hold_expires timestamptz[],
    p_merchant_id text[], p_merchant_name text[], p_mcc text[], p_country text[],
    p_channel text[], p_stand_in boolean[], p_stand_in_cap bigint, p_counted boolean[])
RETURNS TABLE (idx integer, status text, authorization_id text, decision text,
               approved_amount bigint, reason text, stand_in boolean, counted boolean)
LANGUAGE plpgsql
-- every statement below looks rows up by key: its plan is made once per connection (a custom
-- plan per call, which the planner otherwise keeps choosing for array arguments, cost more than
-- the statement), and a plan made for an unknown array length must not scan a table
SET plan_cache_mode = force_generic_plan SET enable_seqscan = off SET enable_hashjoin = off
SET enable_mergejoin = off
AS $$
DECLARE
    n integer := cardinality(p_card_id);
    -- the batch's accounts (any order); a_held is the running held, a_now the time of the last
    -- approval on the account (its updated_at)
    a_id text[];
    a_currency text[];
    a_posted bigint[];
    a_held bigint[];
    a_held_before bigint[];
    a_overdraft bigint[];
    a_now timestamptz[];
    -- per request, in arrival order: its card, what is recorded under its identity, whether
    -- its authorisation id is taken
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
    v_incrementals integer;
    v_answer record;
    v_reason text;
    v_available bigint;
BEGIN
    IF n IS NULL OR n = 0 THEN
        RETURN;
    END IF;
    IF cardinality(p_provider) <> n OR cardinality(p_provider_id) <> n
       OR cardinality(p_sequence) <> n OR cardinality(p_authorization_id) <> n
       OR cardinality(p_parent_id) <> n OR cardinality(p_amount) <> n
       OR cardinality(p_currency) <> n OR cardinality(p_partial) <> n
       OR cardinality(p_rule_reason) <> n OR cardinality(p_policy_version) <> n
       OR cardinality(p_counters) <> n OR cardinality(p_request_hash) <> n
       OR cardinality(p_now) <> n OR cardinality(p_hold_expires) <> n
       OR cardinality(p_merchant_id) <> n OR cardinality(p_merchant_name) <> n
       OR cardinality(p_mcc) <> n OR cardinality(p_country) <> n
       OR cardinality(p_channel) <> n OR cardinality(p_stand_in) <> n
       OR cardinality(p_counted) <> n THEN
        RAISE EXCEPTION 'hf_authorize_batch: arrays of different lengths'
            USING ERRCODE = 'invalid_parameter_value';
    END IF;

    -- an incremental's hold is locked before any account, as every writer does
    v_incrementals := cardinality(array_remove(p_parent_id, NULL));
    IF v_incrementals > 0 THEN
        PERFORM 1 FROM holds h WHERE h.id = ANY (p_parent_id) ORDER BY h.id FOR UPDATE;
    END IF;

    -- 1. locked in id order; FOR NO KEY UPDATE returns each row as it is once locked, not as
    -- the statement's snapshot saw it
    SELECT array_agg(a.id), array_agg(a.currency), array_agg(a.posted), array_agg(a.held),
           array_agg(a.overdraft_limit)
      INTO a_id, a_currency, a_posted, a_held, a_overdraft
      FROM (SELECT x.id, x.currency, x.posted, x.held, x.overdraft_limit FROM accounts x
             WHERE x.id IN (SELECT c.account_id FROM cards c WHERE c.id = ANY (p_card_id))
             ORDER BY x.id FOR NO KEY UPDATE) a;
    a_held_before := a_held;
    a_now := array_fill(NULL::timestamptz, ARRAY[coalesce(cardinality(a_id), 0)]);

    o_status := array_fill('new'::text, ARRAY[n]);
    o_authorization_id := p_authorization_id;
    o_approved := array_fill(0::bigint, ARRAY[n]);
    o_reason := array_fill(NULL::text, ARRAY[n]);
    o_stand_in := p_stand_in;
    o_counted := p_counted;
    o_account := array_fill(NULL::integer, ARRAY[n]);

    -- 2, 3. after the locks: a concurrent retry of a request here waited on them in step 1 and
    -- now finds the first one's committed decision. Then hf_authorize's rules, in its order.
    FOR r IN
        SELECT u.i, c.state AS card_state, c.expires AS card_expires,
               array_position(a_id, c.account_id) AS account,
               q.authorization_id AS prior_id, q.request_hash AS prior_hash,
               q.approved_amount AS prior_approved, q.reason AS prior_reason,
               q.stand_in AS prior_stand_in, q.counted AS prior_counted,
               x.id IS NOT NULL AS taken
          FROM unnest(p_card_id, p_provider, p_provider_id, p_sequence, p_authorization_id)
               WITH ORDINALITY u(card_id, provider, provider_id, sequence, id, i)
          LEFT JOIN cards c ON c.id = u.card_id
          LEFT JOIN authorization_requests q
                 ON q.provider = u.provider AND q.provider_id = u.provider_id
                AND q.sequence = u.sequence
          LEFT JOIN authorizations x ON x.id = u.id
         ORDER BY u.i
    LOOP
        i := i + 1;
        IF r.i <> i THEN  -- cannot happen (each request joins at most one row of each table)
            RAISE EXCEPTION 'hf_authorize_batch: request % read as %', i, r.i;
        END IF;
        IF p_parent_id[i] IS NOT NULL THEN
            o_status[i] := 'incremental';  -- decided after the writes below
            CONTINUE;
        END IF;
        IF r.prior_id IS NOT NULL THEN
            o_authorization_id[i] := r.prior_id;
            IF r.prior_hash <> p_request_hash[i] THEN
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
        v_reason := p_rule_reason[i];
        IF r.card_state IS NULL THEN
            v_reason := 'invalid_card';
        ELSIF r.card_state = 'terminated' THEN
            v_reason := hf_first_reason(v_reason, 'invalid_card');
        ELSIF r.card_state = 'frozen' THEN
            v_reason := hf_first_reason(v_reason, 'card_restricted');
        ELSIF r.card_expires IS NOT NULL
              AND to_char(p_now[i] AT TIME ZONE 'UTC', 'YYYY-MM') > r.card_expires THEN
            v_reason := hf_first_reason(v_reason, 'card_expired');
        END IF;
        IF v_reason IS NULL AND a_currency[k] <> p_currency[i] THEN
            v_reason := 'do_not_honor';
        END IF;
        IF v_reason IS NULL AND p_stand_in[i] AND p_amount[i] > p_stand_in_cap THEN
            v_reason := 'amount_limit_exceeded';
        END IF;
        IF v_reason IS NULL THEN
            v_available := a_posted[k] - a_held[k] + a_overdraft[k];
            IF v_available >= p_amount[i] THEN
                o_approved[i] := p_amount[i];
                v_reason := 'approved';
            ELSIF p_partial[i] AND v_available > 0 THEN
                o_approved[i] := v_available;
                v_reason := 'partial_approval';
            ELSE
                v_reason := 'insufficient_funds';
            END IF;
            IF o_approved[i] > 0 THEN
                a_held[k] := a_held[k] + o_approved[i];
                a_now[k] := p_now[i];
            END IF;
        END IF;
        o_reason[i] := v_reason;
    END LOOP;
    IF i <> n THEN
        RAISE EXCEPTION 'hf_authorize_batch: % requests read of %', i, n;
    END IF;

    -- 4. an approval's authorisation carries its hold; a decline's carries none
    INSERT INTO authorizations (id, provider, provider_id, card_id, account_id, currency, state,
        requested_amount, approved_amount, merchant_id, merchant_name, mcc, country, channel,
        created_at, updated_at, hold_state, hold_authorized, hold_posted, hold_over_posted,
        hold_released, hold_remaining, hold_expires_at, hold_created_at, hold_updated_at,
        hold_forced)
    SELECT u.id, u.provider, u.provider_id, u.card_id, a_id[u.account], u.currency,
           CASE WHEN u.approved > 0 THEN 'pending' ELSE 'declined' END, u.amount, u.approved,
           u.merchant_id, u.merchant_name, u.mcc, u.country, u.channel, u.now, u.now,
           CASE WHEN u.approved > 0 THEN 'open' END,
           CASE WHEN u.approved > 0 THEN u.approved END,
           CASE WHEN u.approved > 0 THEN 0 END, CASE WHEN u.approved > 0 THEN 0 END,
           CASE WHEN u.approved > 0 THEN 0 END,
           CASE WHEN u.approved > 0 THEN u.approved END,
           CASE WHEN u.approved = 0 THEN NULL
                WHEN u.hold_expires >= clock_timestamp() + interval '1 day' THEN u.hold_expires
                ELSE hf_hold_expiry_floor_at(u.hold_expires) END,
           CASE WHEN u.approved > 0 THEN u.now END, CASE WHEN u.approved > 0 THEN u.now END,
           CASE WHEN u.approved > 0 THEN false END
      FROM unnest(o_status, p_authorization_id, p_provider, p_provider_id, p_card_id, o_account,
                  p_currency, p_amount, o_approved, p_merchant_id, p_merchant_name, p_mcc,
                  p_country, p_channel, p_now, p_hold_expires)
           WITH ORDINALITY u(status, id, provider, provider_id, card_id, account, currency,
                             amount, approved, merchant_id, merchant_name, mcc, country,
                             channel, now, hold_expires, i)
     WHERE u.status = 'new'
     ORDER BY u.i;

    -- 5.
    INSERT INTO authorization_requests (provider, provider_id, sequence, authorization_id, kind,
        amount, currency, partial_allowed, decision, approved_amount, reason, stand_in,
        policy_version, counters, request_hash, counted, decided_at)
    SELECT u.provider, u.provider_id, u.sequence, u.id, 'initial', u.amount, u.currency,
           u.partial, CASE WHEN u.approved > 0 THEN 'approve' ELSE 'decline' END, u.approved,
           u.reason, u.stand_in, u.policy_version, u.counters, u.request_hash, u.counted, u.now
      FROM unnest(o_status, p_provider, p_provider_id, p_sequence, p_authorization_id, p_amount,
                  p_currency, p_partial, o_approved, o_reason, p_stand_in, p_policy_version,
                  p_counters, p_request_hash, p_counted, p_now)
           WITH ORDINALITY u(status, provider, provider_id, sequence, id, amount, currency,
                             partial, approved, reason, stand_in, policy_version, counters,
                             request_hash, counted, now, i)
     WHERE u.status = 'new'
     ORDER BY u.i;

    -- 6.
    UPDATE accounts a SET held = u.held, updated_at = u.now
      FROM unnest(a_id, a_held, a_held_before, a_now) u(id, held, held_before, now)
     WHERE a.id = u.id AND u.held <> u.held_before;

    -- the incrementals, one by one by hf_authorize (their holds and accounts are locked
    -- already); they see every hold placed above
    IF v_incrementals > 0 THEN
        FOR j IN 1 .. n LOOP
            CONTINUE WHEN p_parent_id[j] IS NULL;
            SELECT * INTO v_answer FROM hf_authorize(p_provider[j], p_provider_id[j],
                p_sequence[j], p_authorization_id[j], p_parent_id[j], p_card_id[j], p_amount[j],
                p_currency[j], p_partial[j], p_rule_reason[j], p_policy_version[j],
                p_counters[j], p_request_hash[j], p_now[j], p_hold_expires[j],
                p_merchant_id[j], p_merchant_name[j], p_mcc[j], p_country[j], p_channel[j],
                p_stand_in[j], p_stand_in_cap, p_counted[j]);
            o_status[j] := v_answer.status;
            o_authorization_id[j] := v_answer.authorization_id;
            o_approved[j] := v_answer.approved_amount;
            o_reason[j] := v_answer.reason;
            o_stand_in[j] := v_answer.stand_in;
            o_counted[j] := v_answer.counted;
        END LOOP;
    END IF;

    -- 7. (a recorded request's decision is 'approve' exactly when its approved amount is
    -- positive: authorization_requests_check1)
    RETURN QUERY SELECT u.i::integer, u.status, u.id,
           CASE WHEN u.approved > 0 THEN 'approve' ELSE 'decline' END, u.approved, u.reason,
           u.stand_in, u.counted
      FROM unnest(o_status, o_authorization_id, o_approved, o_reason, o_stand_in, o_counted)
           WITH ORDINALITY u(status, id, approved, reason, stand_in, counted, i);
END $$;
