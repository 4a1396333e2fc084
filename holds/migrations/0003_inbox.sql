-- The event inbox: every verified external event (native /v1/events, provider webhooks) is stored
-- here raw (card numbers scrubbed) before it is acknowledged. The event's identity and payload are
-- immutable; only its processing state moves. Consumers claim rows with FOR UPDATE SKIP LOCKED
-- and are woken by NOTIFY holdfast_inbox.

CREATE TABLE inbox_events (
    id                bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    provider          text NOT NULL,
    provider_event_id text NOT NULL CHECK (length(provider_event_id) BETWEEN 1 AND 255),
    type              text NOT NULL,
    payload           jsonb NOT NULL,
    payload_hash      text NOT NULL,
    -- the event in Holdfast's canonical lifecycle form, mapped by the adapter that received it
    -- (NULL: informational, nothing to apply)
    canonical         jsonb,
    received_at       timestamptz NOT NULL DEFAULT now(),
    status            text NOT NULL DEFAULT 'pending'
                      CHECK (status IN ('pending', 'applied', 'quarantined')),
    attempts          integer NOT NULL DEFAULT 0,
    processed_at      timestamptz,
    quarantine_reason text,
    UNIQUE (provider, provider_event_id)
);
CREATE INDEX inbox_events_pending ON inbox_events (id) WHERE status = 'pending';
CREATE INDEX inbox_events_quarantined ON inbox_events ((canonical ->> 'authorization_id'))
    WHERE status = 'quarantined';

CREATE FUNCTION hf_inbox_immutable() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF NEW.provider IS DISTINCT FROM OLD.provider
       OR NEW.provider_event_id IS DISTINCT FROM OLD.provider_event_id
       OR NEW.type IS DISTINCT FROM OLD.type
       OR NEW.payload IS DISTINCT FROM OLD.payload
       OR NEW.payload_hash IS DISTINCT FROM OLD.payload_hash
       OR NEW.canonical IS DISTINCT FROM OLD.canonical
       OR NEW.received_at IS DISTINCT FROM OLD.received_at THEN
        RAISE EXCEPTION 'inbox event % is immutable: only its processing state may change', OLD.id
            USING ERRCODE = 'HF002';
    END IF;
    RETURN NEW;
END $$;

CREATE TRIGGER inbox_events_immutable BEFORE UPDATE ON inbox_events
    FOR EACH ROW EXECUTE FUNCTION hf_inbox_immutable();
CREATE TRIGGER inbox_events_no_delete BEFORE DELETE ON inbox_events
    FOR EACH ROW EXECUTE FUNCTION hf_refuse_change();

CREATE FUNCTION hf_inbox_notify() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('holdfast_inbox', '');
    RETURN NULL;
END $$;

CREATE TRIGGER inbox_events_notify AFTER INSERT ON inbox_events
    FOR EACH STATEMENT EXECUTE FUNCTION hf_inbox_notify();
