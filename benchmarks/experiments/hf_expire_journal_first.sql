-- A variant of hf_expire_late_lock.sql (an experiment, NOT applied by the migrations): the
-- expiry operations are journalled in the first statement, before the accounts are locked. The
-- journal's foreign key then takes KEY SHARE locks on the accounts early in the batch, which
-- block hf_authorize's FOR UPDATE for the rest of it -- unless hf_authorize locks FOR NO KEY
-- UPDATE (hf_authorize_no_key_update.sql): use the two together. The accounts' own lock and
-- update then take only the last few milliseconds of a batch.
CREATE OR REPLACE FUNCTION hf_expire(p_now timestamptz, p_limit integer)
RETURNS TABLE (holds_expired integer, amount_released bigint) LANGUAGE plpgsql AS $$
DECLARE
    v_ids text[];
    v_hold_accounts text[];
    v_currencies text[];
    v_remaining bigint[];
    v_accounts text[];
    v_amounts bigint[];
BEGIN
    WITH due AS (
        SELECT h.id, h.account_id, h.currency, h.remaining FROM holds h
         WHERE h.state = 'open' AND h.expires_at <= p_now
         ORDER BY h.expires_at LIMIT p_limit FOR UPDATE SKIP LOCKED
    ), journal AS (
        INSERT INTO ledger_operations (op_id, kind, authorization_id, account_id, currency,
                                       requested, released, created_at)
        SELECT 'expire:' || d.id, 'expire', d.id, d.account_id, d.currency, d.remaining,
               d.remaining, p_now FROM due d
    ), auths AS (
        -- the authorisation lifecycle table's expiry row (clearing/lifecycle.py), in bulk
        UPDATE authorizations a SET state = 'expired', updated_at = p_now FROM due d
         WHERE a.id = d.id AND a.state IN ('pending', 'partially_reversed')
    ), released AS (
        UPDATE holds h SET released = h.released + h.remaining, remaining = 0,
               state = 'expired', updated_at = p_now
          FROM due d WHERE h.id = d.id
    ), per_account AS (
        SELECT d.account_id, sum(d.remaining)::bigint AS total FROM due d
         GROUP BY d.account_id
    )
    SELECT (SELECT array_agg(id) FROM due), (SELECT array_agg(account_id) FROM due),
           (SELECT array_agg(currency) FROM due), (SELECT array_agg(remaining) FROM due),
           array_agg(p.account_id ORDER BY p.account_id), array_agg(p.total ORDER BY p.account_id)
      INTO v_ids, v_hold_accounts, v_currencies, v_remaining, v_accounts, v_amounts
      FROM per_account p;
    IF v_ids IS NULL THEN
        RETURN QUERY SELECT 0, 0::bigint;
        RETURN;
    END IF;
    PERFORM 1 FROM accounts WHERE id = ANY (v_accounts) ORDER BY id FOR NO KEY UPDATE;
    UPDATE accounts a SET held = a.held - s.total, updated_at = p_now
      FROM unnest(v_accounts, v_amounts) AS s(id, total) WHERE a.id = s.id;
    RETURN QUERY SELECT cardinality(v_ids), (SELECT coalesce(sum(r), 0)::bigint
                                              FROM unnest(v_remaining) AS r);
END $$;
