-- Stand-in approvals (decided without Redis) still to be counted in the velocity counters once
-- Redis is back.
CREATE INDEX authorization_requests_uncounted ON authorization_requests (id)
    WHERE stand_in AND decision = 'approve' AND NOT counted;
