-- Expiring a batch finds each hold once, not twice.
--
-- 0010's hf_expire_holds locked the batch's due holds (through the primary key) and then updated
-- them in the same statement, joined to the locked rows by id: a second primary-key descent per
-- hold, ~12 % of the sweep's PostgreSQL CPU (measured alone on 1,000,000 due holds in batches of
-- 200: 19.1 against 16.9 us per hold; benchmarks/README.md, "Session 6"). Now the lock returns
-- each row's physical address (ctid) and a second statement updates the rows at those addresses.
--
-- Why an address read in one statement is right in the next:
--   * the rows are locked by this transaction from the first statement to the commit, so no
--     other writer can update or delete them, and VACUUM cannot move a live row (only VACUUM
--     FULL and CLUSTER move rows, and they need a lock that waits for this transaction);
--   * the lock follows a row another writer updated before it was taken to its newest version,
--     re-checks the conditions on that version and returns that version's address;
--   * the update is its own statement, so its snapshot is taken after the locks: it sees the
--     version the lock returned (one statement with both steps would see the older version
--     through its snapshot, and would skip a row that was updated in between).
-- And if any of that were ever wrong, the update re-checks that each hold is still open and
-- counts the rows it changed: a count other than the rows locked aborts the whole batch (nothing
-- is released, the sweep stops with the error) rather than release an amount the holds do not
-- show.
--
-- The lock still goes through the primary key on purpose: reading a page through an index lets
-- PostgreSQL prune the row versions earlier batches left dead on it, which keeps the update
-- heap-only. Addresses carried from the sweep's read of the window (skipping the index) made
-- only 14 % of the updates heap-only and cost more than they saved (22 against 17 us per hold).
--
-- (No schema change, but it concerns 0012's argument: since this change the sweep also raises
-- the mark after each window it finishes, not only after a complete pass, to the expiry of the
-- last due hold the window read, capped as at the end of a pass (clearing/sweep.py,
-- _raise_mark). Every hold due before that point that was committed when the pass began has
-- been read, each page being a statement of its own after the pass began, and expired or left
-- open; a hold placed or moved since expires no earlier than its writer's clock, after the pass
-- began; an expiry only moves later otherwise (an incremental takes the greater of the two).)

CREATE OR REPLACE FUNCTION hf_expire_holds(p_now timestamptz, p_ids text[])
RETURNS TABLE (holds_expired integer, amount_released bigint) LANGUAGE plpgsql AS $$
DECLARE
    v_count integer;
    v_updated integer;
    v_tids tid[];
    v_accounts text[];
    v_amounts bigint[];
BEGIN
    -- SKIP LOCKED: a hold another sweeper or a lifecycle event is working on is left to it;
    -- the state and expiry are checked again here, so a stale list is harmless
    WITH due AS (
        SELECT a.ctid AS tid, a.account_id, a.hold_remaining AS remaining FROM authorizations a
         WHERE a.id = ANY (p_ids) AND a.hold_state = 'open' AND a.hold_expires_at <= p_now
         FOR UPDATE SKIP LOCKED
    ), per_account AS (
        SELECT d.account_id, sum(d.remaining)::bigint AS total FROM due d GROUP BY d.account_id
    )
    SELECT (SELECT count(*) FROM due), (SELECT array_agg(d.tid) FROM due d),
           array_agg(p.account_id ORDER BY p.account_id), array_agg(p.total ORDER BY p.account_id)
      INTO v_count, v_tids, v_accounts, v_amounts
      FROM per_account p;
    IF v_count = 0 THEN
        RETURN QUERY SELECT 0, 0::bigint;
        RETURN;
    END IF;
    UPDATE authorizations a
       SET hold_released = a.hold_released + a.hold_remaining, hold_remaining = 0,
           hold_state = 'expired', hold_updated_at = p_now
     WHERE a.ctid = ANY (v_tids) AND a.hold_state = 'open';
    GET DIAGNOSTICS v_updated = ROW_COUNT;
    IF v_updated <> v_count THEN
        RAISE EXCEPTION 'expiry: locked % due holds, updated %', v_count, v_updated
            USING ERRCODE = 'internal_error';
    END IF;
    -- accounts last and in id order, as every other writer locks them: the hot path waits at
    -- most for this batch's last statement and its commit, and no two writers deadlock
    PERFORM 1 FROM accounts WHERE id = ANY (v_accounts) ORDER BY id FOR NO KEY UPDATE;
    UPDATE accounts a SET held = a.held - s.total, updated_at = p_now
      FROM unnest(v_accounts, v_amounts) AS s(id, total) WHERE a.id = s.id;
    RETURN QUERY SELECT v_count, (SELECT coalesce(sum(t), 0)::bigint FROM unnest(v_amounts) t);
END $$;
