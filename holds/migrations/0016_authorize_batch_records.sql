-- A batch of authorisations sent as one array of records instead of 21 arrays of columns.
--
-- The server sends each ledger batch as parameters, and asyncpg encodes an array parameter
-- element by element, testing every element against collections.abc (Iterable, Sized, Mapping:
-- a Python-level isinstance each) twice before encoding it: about 82,000 instructions of the
-- server per authorisation for the 21 arrays of 0015's hf_authorize_batch, one element each,
-- 16 % of everything the server process does for a request (benchmarks/README.md,
-- "Session 11"). A record's fields are encoded by their codecs directly, so one array of
-- records costs those tests once per request, not once per field. The server process is what
-- limits throughput at saturation, so this is where its time is worth saving.
--
-- hf_authorize_request is AuthorizeItem (holds/ledger.py), field for field and in its order.
-- hf_authorize_batch(hf_authorize_request[], bigint) decides exactly as 0015's did (the same
-- steps, the same rules, the same rows; tests/test_authorize_batch_set.py compares it with the
-- reference loop, hf_authorize_batch_each). 0015's signature stays, as a wrapper that builds the
-- records and calls this one, for a server of the previous release during a rolling upgrade.

CREATE TYPE hf_authorize_request AS (
    provider text, provider_id text, sequence integer, authorization_id text, parent_id text,
    card_id text, amount bigint, currency text, partial_allowed boolean, rule_reason text,
    policy_version integer, counters jsonb, request_hash text, now timestamptz,
    hold_expires timestamptz, merchant_id text, merchant_name text, mcc text, country text,
    channel text, stand_in boolean, counted boolean);

CREATE FUNCTION hf_authorize_batch(p_requests hf_authorize_request[], p_stand_in_cap bigint)
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
               p.authorization_id AS prior_id, p.request_hash AS prior_hash,
               p.approved_amount AS prior_approved, p.reason AS prior_reason,
               p.stand_in AS prior_stand_in, p.counted AS prior_counted,
               x.id IS NOT NULL AS taken
          FROM unnest(p_requests) WITH ORDINALITY u
          LEFT JOIN cards c ON c.id = u.card_id
          LEFT JOIN authorization_requests p
                 ON p.provider = u.provider AND p.provider_id = u.provider_id
                AND p.sequence = u.sequence
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

    -- 4. an approval's authorisation carries its hold; a decline's carries none
    INSERT INTO authorizations (id, provider, provider_id, card_id, account_id, currency, state,
        requested_amount, approved_amount, merchant_id, merchant_name, mcc, country, channel,
        created_at, updated_at, hold_state, hold_authorized, hold_posted, hold_over_posted,
        hold_released, hold_remaining, hold_expires_at, hold_created_at, hold_updated_at,
        hold_forced)
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
           CASE WHEN u.approved > 0 THEN false END
      FROM (SELECT v.*, o_account[v.ordinality] AS account, o_approved[v.ordinality] AS approved
              FROM unnest(p_requests) WITH ORDINALITY v
             WHERE o_status[v.ordinality] = 'new') u
     ORDER BY u.ordinality;

    -- 5.
    INSERT INTO authorization_requests (provider, provider_id, sequence, authorization_id, kind,
        amount, currency, partial_allowed, decision, approved_amount, reason, stand_in,
        policy_version, counters, request_hash, counted, decided_at)
    SELECT u.provider, u.provider_id, u.sequence, u.authorization_id, 'initial', u.amount,
           u.currency, u.partial_allowed,
           CASE WHEN u.approved > 0 THEN 'approve' ELSE 'decline' END, u.approved, u.reason,
           u.stand_in, u.policy_version, u.counters, u.request_hash, u.counted, u.now
      FROM (SELECT v.*, o_approved[v.ordinality] AS approved, o_reason[v.ordinality] AS reason
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
    -- positive: authorization_requests_row_ok)
    RETURN QUERY SELECT u.i::integer, u.status, u.id,
           CASE WHEN u.approved > 0 THEN 'approve' ELSE 'decline' END, u.approved, u.reason,
           u.stand_in, u.counted
      FROM unnest(o_status, o_authorization_id, o_approved, o_reason, o_stand_in, o_counted)
           WITH ORDINALITY u(status, id, approved, reason, stand_in, counted, i);
END $$;

-- 0015's signature, for a server of the previous release: its columns as records, then the
-- function above (arrays of different lengths are refused, as 0015 refused them)
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
SET plan_cache_mode = force_generic_plan SET enable_seqscan = off SET enable_hashjoin = off
SET enable_mergejoin = off
AS $$
DECLARE
    n integer := coalesce(cardinality(p_card_id), 0);
BEGIN
    IF coalesce(cardinality(p_provider), 0) <> n OR coalesce(cardinality(p_provider_id), 0) <> n
       OR coalesce(cardinality(p_sequence), 0) <> n
       OR coalesce(cardinality(p_authorization_id), 0) <> n
       OR coalesce(cardinality(p_parent_id), 0) <> n OR coalesce(cardinality(p_amount), 0) <> n
       OR coalesce(cardinality(p_currency), 0) <> n OR coalesce(cardinality(p_partial), 0) <> n
       OR coalesce(cardinality(p_rule_reason), 0) <> n
       OR coalesce(cardinality(p_policy_version), 0) <> n
       OR coalesce(cardinality(p_counters), 0) <> n
       OR coalesce(cardinality(p_request_hash), 0) <> n
       OR coalesce(cardinality(p_now), 0) <> n OR coalesce(cardinality(p_hold_expires), 0) <> n
       OR coalesce(cardinality(p_merchant_id), 0) <> n
       OR coalesce(cardinality(p_merchant_name), 0) <> n
       OR coalesce(cardinality(p_mcc), 0) <> n OR coalesce(cardinality(p_country), 0) <> n
       OR coalesce(cardinality(p_channel), 0) <> n OR coalesce(cardinality(p_stand_in), 0) <> n
       OR coalesce(cardinality(p_counted), 0) <> n THEN
        RAISE EXCEPTION 'hf_authorize_batch: arrays of different lengths'
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    RETURN QUERY SELECT * FROM hf_authorize_batch(ARRAY(
        SELECT ROW(u.provider, u.provider_id, u.sequence, u.authorization_id, u.parent_id,
                   u.card_id, u.amount, u.currency, u.partial, u.rule_reason,
                   u.policy_version, u.counters, u.request_hash, u.now, u.hold_expires,
                   u.merchant_id, u.merchant_name, u.mcc, u.country, u.channel, u.stand_in,
                   u.counted)::hf_authorize_request
          FROM unnest(p_provider, p_provider_id, p_sequence, p_authorization_id, p_parent_id,
                      p_card_id, p_amount, p_currency, p_partial, p_rule_reason,
                      p_policy_version, p_counters, p_request_hash, p_now, p_hold_expires,
                      p_merchant_id, p_merchant_name, p_mcc, p_country, p_channel, p_stand_in,
                      p_counted)
               WITH ORDINALITY u(provider, provider_id, sequence, authorization_id, parent_id,
                                 card_id, amount, currency, partial, rule_reason,
                                 policy_version, counters, request_hash, now, hold_expires,
                                 merchant_id, merchant_name, mcc, country, channel, stand_in,
                                 counted, i)
         ORDER BY u.i), p_stand_in_cap);
END $$;
