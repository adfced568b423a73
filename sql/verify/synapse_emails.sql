-- What MAS `user_emails` must hold: every `email` third-party id, address verbatim.
SELECT *
  FROM (SELECT LOCALPART(q.user_id) AS username,
               q.address            AS email,
               q.added_at::int8     AS created_at,
               q.skip
          FROM (
#source threepids
               ) q
       #params
         WHERE q.medium = 'email'
       ) v
 ORDER BY v.username COLLATE "C" NULLS FIRST, v.email COLLATE "C" NULLS FIRST, v.skip IS NOT NULL
