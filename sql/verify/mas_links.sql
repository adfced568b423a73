SELECT l.upstream_oauth_provider_id, l.subject, u.username, l.created_at, l.upstream_oauth_link_id
  FROM upstream_oauth_links l
  LEFT JOIN users u ON u.user_id = l.user_id
 ORDER BY l.upstream_oauth_provider_id NULLS FIRST, l.subject COLLATE "C" NULLS FIRST
