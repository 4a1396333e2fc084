-- Several authorisation requests in one transaction (group commit by the application).
--
-- Under load, requests that reach the server while earlier ledger calls are still running are
-- gathered and sent together: one round trip, one transaction, one WAL flush for all of them,
-- instead of one each. A transaction's fixed cost (protocol, snapshot, commit record, flush wake
-- ups) is about half of an authorisation's PostgreSQL CPU when sent alone. Each request is still
-- decided by hf_authorize, one after another in arrival order, so the second of two requests on
-- one account sees the first one's hold; every approval in the batch is returned only after the
-- batch has committed.
--
-- Locks: every hold an incremental names, then every account the batch's cards draw on, each set
-- in id order, all before anything is written. That is the order every other writer follows (a
-- hold before its account; several accounts in id order, as hf_expire does), so two batches, or a
-- batch and a consumer, cannot wait on each other in a cycle; hf_authorize's own locks are then
-- already held. A card's account never changes, so the accounts read here are the ones
-- hf_authorize locks.
--
-- p_stand_in_cap is one value for the batch (a server setting); everything else is one array
-- element per request, all arrays of the same length. idx is the request's 1-based position.
CREATE FUNCTION hf_authorize_batch(
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
