-- wrk script: every request is `POST /orders` with one valid order.
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.body = '{"customerId": "c-42", "items": [{"productId": "p-7", "quantity": 2}], "total": 19.98}'
