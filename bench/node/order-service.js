// Order service of the original Node.js services: `POST /orders` publishes
// `order.placed` to a topic exchange without publisher confirms and answers
// 201 with the order.
//
// PORT sets the port (default 3100), EXCHANGE the exchange (default `events`,
// declared if missing), RABBITMQ_URL the broker.
const express = require("express");
const amqp = require("amqplib");

const EXCHANGE = process.env.EXCHANGE || "events";
const app = express();
app.use(express.json());
let channel = null;

async function connect() {
  const connection = await amqp.connect(process.env.RABBITMQ_URL || "amqp://guest:guest@127.0.0.1:5672");
  channel = await connection.createChannel();
  await channel.assertExchange(EXCHANGE, "topic", { durable: true });
}

function publishEvent(routingKey, data) {
  const event = {
    id: `evt_${Date.now()}_${Math.random().toString(36).slice(2, 11)}`,
    type: routingKey,
    timestamp: new Date().toISOString(),
    data,
  };
  channel.publish(EXCHANGE, routingKey, Buffer.from(JSON.stringify(event)), {
    persistent: true,
    contentType: "application/json",
  });
}

app.post("/orders", (req, res) => {
  const order = {
    orderId: `ord_${Date.now()}`,
    customerId: req.body.customerId,
    items: req.body.items,
    total: req.body.total,
  };
  publishEvent("order.placed", order);
  res.status(201).json({ message: "Order created", order });
});

connect()
  .then(() => {
    const port = Number(process.env.PORT || 3100);
    app.listen(port, "127.0.0.1", () => console.log(`order service listening on 127.0.0.1:${port}`));
  })
  .catch((error) => {
    console.error(`order-service.js failed to start: ${error.stack || error}`);
    process.exit(1);
  });
