-- The expiry sweep releases holds it is given (hf_expire_holds) instead of the next N by expiry
-- only, so the sweep can hand it a batch grouped by account: a batch of the 1,000 holds due
-- first touches ~1,000 different accounts (one lock, one row update and its WAL each: ~40 % of
-- the sweep's PostgreSQL CPU per hold, measured), a batch taken from a window of 50,000 due
-- holds sorted by account touches as many accounts as it must and no more, and locks fewer
-- of the accounts the hot path is deciding on. clearing/sweep.py builds the windows.
--
-- hf_expire(p_now, p_limit) keeps its meaning (the p_limit holds due first) and now calls the
-- same body, so there is one definition of what expiring a hold does.

CREATE FUNCTION hf_expire_holds(p_now timestamptz, p_ids text[])
RETURNS TABLE (holds_expired integer, amount_released bigint) LANGUAGE plpgsql AS $$
DECLARE
    v_count integer;
    v_accounts text[];
    v_amounts bigint[];
BEGIN
    -- SKIP LOCKED: a hold another sweeper or a lifecycle event is working on is left to it;
    -- the state and expiry are checked again here, so a stale list is harmless
    WITH due AS (
        SELECT h.id, h.account_id, h.remaining FROM holds h
         WHERE h.id = ANY (p_ids) AND h.state = 'open' AND h.expires_at <= p_now
         FOR UPDATE SKIP LOCKED
    ), released AS (
        UPDATE holds h SET released = h.released + h.remaining, remaining = 0,
               state = 'expired', updated_at = p_now
          FROM due d WHERE h.id = d.id
    ), per_account AS (
        SELECT d.account_id, sum(d.remaining)::bigint AS total FROM due d GROUP BY d.account_id
    )
    SELECT (SELECT count(*) FROM due), array_agg(p.account_id ORDER BY p.account_id),
           array_agg(p.total ORDER BY p.account_id)
      INTO v_count, v_accounts, v_amounts
      FROM per_account p;
    IF v_count = 0 THEN
        RETURN QUERY SELECT 0, 0::bigint;
        RETURN;
    END IF;
    -- accounts last and in id order, as every other writer locks them: the hot path waits at
    -- most for this batch's last statement and its commit, and no two writers deadlock
    PERFORM 1 FROM accounts WHERE id = ANY (v_accounts) ORDER BY id FOR NO KEY UPDATE;
    UPDATE accounts a SET held = a.held - s.total, updated_at = p_now
      FROM unnest(v_accounts, v_amounts) AS s(id, total) WHERE a.id = s.id;
    RETURN QUERY SELECT v_count, (SELECT coalesce(sum(t), 0)::bigint FROM unnest(v_amounts) t);
END $$;

CREATE OR REPLACE FUNCTION hf_expire(p_now timestamptz, p_limit integer)
RETURNS TABLE (holds_expired integer, amount_released bigint) LANGUAGE sql AS $$
    SELECT * FROM hf_expire_holds(p_now, ARRAY(
        SELECT h.id FROM holds h WHERE h.state = 'open' AND h.expires_at <= p_now
         ORDER BY h.expires_at LIMIT p_limit))
$$;
