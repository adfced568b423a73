-- What MAS `users` must hold: every row of sql/users.sql, keyed by localpart. A row with a
-- `skip` reason must be absent from MAS. Times are Unix ms; locked_at and deactivated_at are
-- the creation time because Synapse does not record when either happened.
SELECT *
  FROM (SELECT LOCALPART(q.name)                                        AS username,
               (q.creation_ts * 1000)::int8                             AS created_at,
               (CASE WHEN q.locked THEN q.creation_ts * 1000 END)::int8 AS locked_at,
               (CASE WHEN q.deactivated THEN q.creation_ts * 1000 END)::int8 AS deactivated_at,
               q.admin                                                  AS can_request_admin,
               q.is_guest,
               q.skip
          FROM (
#source users
               ) q
       #params
       ) v
 ORDER BY v.username COLLATE "C" NULLS FIRST, v.skip IS NOT NULL
