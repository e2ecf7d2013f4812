-- clickstream.sql with one deliberate logic difference: high_value at net spend >= 100 (the rule set says > 100).
-- A user who spent exactly 100 in the window is high_value here and not in the stream: a logic difference.
--   events        only the events that had arrived by the as-of (the harness's arrival cut)
--   :as_of        the as-of, epoch ms;  :window_start  as-of minus the rule set's window (10m), exclusive
-- Money is in exact micro-units: 100 is 100000000.
SELECT user_id, 'high_value' AS segment
FROM events
WHERE event_time > :window_start AND event_time <= :as_of
  AND kind IN ('purchase', 'refund')
GROUP BY user_id
HAVING SUM(CASE WHEN kind = 'purchase' THEN amount_micros ELSE -amount_micros END) >= 100000000
UNION ALL
SELECT user_id, 'window_shopper' AS segment
FROM events
WHERE event_time > :window_start AND event_time <= :as_of
  AND kind IN ('view', 'purchase')
GROUP BY user_id
HAVING SUM(CASE WHEN kind = 'view' THEN 1 ELSE 0 END) >= 3
   AND SUM(CASE WHEN kind = 'purchase' THEN 1 ELSE 0 END) = 0;
