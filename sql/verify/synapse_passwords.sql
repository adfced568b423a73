-- What MAS `user_passwords` must hold: the hash of every user that has one, verbatim, as
-- version 1, created with the user.
SELECT *
  FROM (SELECT LOCALPART(q.name)            AS username,
               q.password_hash              AS hashed_password,
               (q.creation_ts * 1000)::int8 AS created_at,
               1::int8                      AS version,
               q.skip
          FROM (
#source users
               ) q
       #params
         WHERE q.password_hash IS NOT NULL
       ) v
 ORDER BY v.username COLLATE "C" NULLS FIRST, v.skip IS NOT NULL
