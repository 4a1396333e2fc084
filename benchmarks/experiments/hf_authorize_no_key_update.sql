-- An experiment, NOT applied by the migrations: hf_authorize locks the cardholder's account
-- FOR NO KEY UPDATE instead of FOR UPDATE. It still serialises every writer of the account's
-- balances (NO KEY UPDATE conflicts with itself and with UPDATE), but no longer waits for the
-- KEY SHARE row locks that foreign-key checks take on the account (an INSERT into holds,
-- authorizations, ledger_operations or postings that references it, in any other transaction:
-- e.g. a sweep batch journalling its expiries). The function text is otherwise unchanged.
DO $$
DECLARE
    v_def text := pg_get_functiondef('hf_authorize'::regproc);
    v_new text := regexp_replace(v_def, 'FOR UPDATE OF a\y', 'FOR NO KEY UPDATE OF a');
BEGIN
    IF v_new = v_def OR v_new ~ 'FOR UPDATE OF a\y' THEN
        RAISE EXCEPTION 'hf_authorize no longer has the expected account lock (FOR UPDATE OF a)';
    END IF;
    EXECUTE v_new;
END $$;
