-- wrk script: every request is `POST /orders` with one valid order whose
-- JSON body is padded to 1024 bytes with a `note` field, the size of the
-- records that the raw rdkafka producer writes.
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
local head = '{"customerId": "c-42", "items": [{"productId": "p-7", "quantity": 2}], ' ..
    '"total": 19.98, "note": "'
local tail = '"}'
wrk.body = head .. string.rep("x", 1024 - #head - #tail) .. tail
