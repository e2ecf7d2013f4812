-- examples/byo/rees46.yaml (rees46-shoppers@v1) as one hand-written query, for
-- `segshadow shadow run --rules examples/byo/rees46.yaml --legacy-sql examples/byo/rees46.sql`.
-- With that rule set declared, the view's amount_micros holds attrs.price (the field its sums read, in
-- exact micro-units) and merchant holds attrs.brand (the field its distinct counts read).
SELECT user_id, 'buyer' AS segment
FROM events
WHERE event_time > :window_start AND event_time <= :as_of AND kind = 'purchase'
GROUP BY user_id
HAVING SUM(amount_micros) > 0
UNION ALL
SELECT user_id, 'brand_browser' AS segment
FROM events
WHERE event_time > :window_start AND event_time <= :as_of AND kind IN ('view', 'purchase')
GROUP BY user_id
HAVING COUNT(DISTINCT CASE WHEN kind = 'view' THEN merchant END) >= 2
   AND SUM(CASE WHEN kind = 'purchase' THEN 1 ELSE 0 END) = 0
UNION ALL
SELECT user_id, 'cart_abandoner' AS segment
FROM events
WHERE event_time > :window_start AND event_time <= :as_of AND kind IN ('cart', 'purchase')
GROUP BY user_id
HAVING SUM(CASE WHEN kind = 'cart' THEN 1 ELSE 0 END) >= 1
   AND SUM(CASE WHEN kind = 'purchase' THEN 1 ELSE 0 END) = 0
