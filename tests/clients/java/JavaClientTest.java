// What Java applications do with the RabbitMQ Java client (com.rabbitmq:amqp-client), as
// scenarios against a broker: RabbitMQ's tutorials, confirms, returns, transactions,
// channel errors, cancel notifications, dead-lettering, large bodies and automatic
// recovery after the broker closes the connection.
//
// Run with Java 11+ in source mode (no build step):
//   java -cp amqp-client.jar:slf4j-api.jar:slf4j-nop.jar JavaClientTest.java \
//       --host H --port P --http-port HP --json results.json
// Each test's outcome goes to the JSON file, in the format of unittest_json_runner.py.
// Without --http-port (a broker without warren's management API), the recovery test fails.

import com.rabbitmq.client.*;

import java.io.IOException;
import java.io.PrintWriter;
import java.io.StringWriter;
import java.net.HttpURLConnection;
import java.net.URI;
import java.net.URLEncoder;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.*;
import java.util.concurrent.*;
import java.util.concurrent.atomic.AtomicInteger;

public class JavaClientTest {
    static String host = "127.0.0.1";
    static int port = 5672;
    static int httpPort = 0;
    static final long WAIT_S = 10;

    interface Body {
        void run() throws Exception;
    }

    static ConnectionFactory factory() {
        ConnectionFactory f = new ConnectionFactory();
        f.setHost(host);
        f.setPort(port);
        f.setUsername("guest");
        f.setPassword("guest");
        f.setAutomaticRecoveryEnabled(false);
        return f;
    }

    static String unique(String prefix) {
        return prefix + "-" + UUID.randomUUID();
    }

    static void check(boolean ok, String what) {
        if (!ok) throw new AssertionError(what);
    }

    static byte[] bytes(String s) {
        return s.getBytes(StandardCharsets.UTF_8);
    }

    static String text(byte[] b) {
        return new String(b, StandardCharsets.UTF_8);
    }

    /** Consumes from `queue` with auto-ack into a blocking queue of bodies. */
    static BlockingQueue<String> collect(Channel ch, String queue) throws IOException {
        BlockingQueue<String> got = new LinkedBlockingQueue<>();
        ch.basicConsume(queue, true, new DefaultConsumer(ch) {
            @Override
            public void handleDelivery(String tag, Envelope env, AMQP.BasicProperties props, byte[] body) {
                got.add(text(body));
            }
        });
        return got;
    }

    /** `basic.get` from `queue` until a message comes, for up to 2 s (null if none). */
    static GetResponse getWithin(Channel ch, String queue, boolean autoAck) throws Exception {
        for (int i = 0; i < 100; i++) {
            GetResponse r = ch.basicGet(queue, autoAck);
            if (r != null) return r;
            Thread.sleep(20);
        }
        return null;
    }

    static String next(BlockingQueue<String> q) throws InterruptedException {
        String s = q.poll(WAIT_S, TimeUnit.SECONDS);
        check(s != null, "no delivery within " + WAIT_S + " s");
        return s;
    }

    // ----- RabbitMQ's tutorials -----

    static void helloWorld() throws Exception {
        try (Connection c = factory().newConnection(); Channel ch = c.createChannel()) {
            String q = unique("hello");
            ch.queueDeclare(q, false, false, true, null);
            ch.basicPublish("", q, null, bytes("Hello World!"));
            GetResponse r = getWithin(ch, q, true);
            check(r != null && text(r.getBody()).equals("Hello World!"), "basic.get returns the message");
        }
    }

    static void workQueuesShareWorkWithPrefetchAndAcks() throws Exception {
        try (Connection c = factory().newConnection()) {
            String q = unique("task_queue");
            Channel setup = c.createChannel();
            setup.queueDeclare(q, true, false, false, null);
            Map<String, AtomicInteger> perWorker = new ConcurrentHashMap<>();
            CountDownLatch done = new CountDownLatch(20);
            for (String name : List.of("w1", "w2")) {
                Channel ch = c.createChannel();
                ch.basicQos(1);
                perWorker.put(name, new AtomicInteger());
                ch.basicConsume(q, false, new DefaultConsumer(ch) {
                    @Override
                    public void handleDelivery(String tag, Envelope env, AMQP.BasicProperties p, byte[] body)
                            throws IOException {
                        perWorker.get(name).incrementAndGet();
                        try {
                            Thread.sleep(5);
                        } catch (InterruptedException e) {
                            Thread.currentThread().interrupt();
                        }
                        getChannel().basicAck(env.getDeliveryTag(), false);
                        done.countDown();
                    }
                });
            }
            for (int i = 0; i < 20; i++) {
                setup.basicPublish("", q, MessageProperties.PERSISTENT_TEXT_PLAIN, bytes("task " + i));
            }
            check(done.await(WAIT_S, TimeUnit.SECONDS), "20 tasks done");
            check(perWorker.get("w1").get() > 0 && perWorker.get("w2").get() > 0,
                  "both workers got tasks: " + perWorker);
            setup.queueDelete(q);
        }
    }

    static void unackedMessagesAreRedeliveredWhenTheChannelCloses() throws Exception {
        try (Connection c = factory().newConnection()) {
            String q = unique("redeliver");
            Channel ch = c.createChannel();
            ch.queueDeclare(q, false, false, false, null);
            ch.basicPublish("", q, null, bytes("again"));
            Channel worker = c.createChannel();
            CountDownLatch got = new CountDownLatch(1);
            worker.basicConsume(q, false, new DefaultConsumer(worker) {
                @Override
                public void handleDelivery(String tag, Envelope env, AMQP.BasicProperties p, byte[] body) {
                    got.countDown();
                }
            });
            check(got.await(WAIT_S, TimeUnit.SECONDS), "first delivery");
            worker.close();
            GetResponse r = getWithin(ch, q, true);
            check(r != null && r.getEnvelope().isRedeliver(), "requeued with the redelivered flag");
            ch.queueDelete(q);
        }
    }

    static void publishSubscribeOverFanout() throws Exception {
        try (Connection c = factory().newConnection(); Channel ch = c.createChannel()) {
            String ex = unique("logs");
            ch.exchangeDeclare(ex, BuiltinExchangeType.FANOUT);
            String q1 = ch.queueDeclare().getQueue();
            String q2 = ch.queueDeclare().getQueue();
            check(q1.startsWith("amq.gen-"), "server-named queue: " + q1);
            ch.queueBind(q1, ex, "");
            ch.queueBind(q2, ex, "");
            BlockingQueue<String> a = collect(ch, q1), b = collect(ch, q2);
            ch.basicPublish(ex, "", null, bytes("log line"));
            check(next(a).equals("log line") && next(b).equals("log line"), "both subscribers");
            ch.exchangeDelete(ex);
        }
    }

    static void routingAndTopics() throws Exception {
        try (Connection c = factory().newConnection(); Channel ch = c.createChannel()) {
            String direct = unique("direct_logs"), topic = unique("topic_logs");
            ch.exchangeDeclare(direct, BuiltinExchangeType.DIRECT);
            ch.exchangeDeclare(topic, BuiltinExchangeType.TOPIC);
            String errors = ch.queueDeclare().getQueue();
            ch.queueBind(errors, direct, "error");
            String orange = ch.queueDeclare().getQueue(), lazy = ch.queueDeclare().getQueue();
            ch.queueBind(orange, topic, "*.orange.*");
            ch.queueBind(lazy, topic, "*.*.rabbit");
            ch.queueBind(lazy, topic, "lazy.#");
            BlockingQueue<String> e = collect(ch, errors), o = collect(ch, orange), l = collect(ch, lazy);
            ch.basicPublish(direct, "info", null, bytes("info"));
            ch.basicPublish(direct, "error", null, bytes("error"));
            ch.basicPublish(topic, "quick.orange.rabbit", null, bytes("qor"));
            ch.basicPublish(topic, "lazy.pink.elephant", null, bytes("lpe"));
            ch.basicPublish(topic, "quick.brown.fox", null, bytes("qbf"));
            check(next(e).equals("error"), "direct: error only");
            check(next(o).equals("qor"), "topic: *.orange.*");
            Set<String> lazyGot = new HashSet<>(List.of(next(l), next(l)));
            check(lazyGot.equals(Set.of("qor", "lpe")), "topic: *.*.rabbit and lazy.#: " + lazyGot);
            Thread.sleep(100);
            check(e.isEmpty() && o.isEmpty() && l.isEmpty(), "nothing else routed");
            ch.exchangeDelete(direct);
            ch.exchangeDelete(topic);
        }
    }

    static void rpcOverDirectReplyTo() throws Exception {
        try (Connection c = factory().newConnection()) {
            String rpcQueue = unique("rpc_queue");
            Channel server = c.createChannel();
            server.queueDeclare(rpcQueue, false, false, true, null);
            server.basicConsume(rpcQueue, false, new DefaultConsumer(server) {
                @Override
                public void handleDelivery(String tag, Envelope env, AMQP.BasicProperties p, byte[] body)
                        throws IOException {
                    int n = Integer.parseInt(text(body));
                    AMQP.BasicProperties reply = new AMQP.BasicProperties.Builder()
                            .correlationId(p.getCorrelationId()).build();
                    getChannel().basicPublish("", p.getReplyTo(), reply, bytes(Integer.toString(n * n)));
                    getChannel().basicAck(env.getDeliveryTag(), false);
                }
            });
            Channel client = c.createChannel();
            Map<String, String> replies = new ConcurrentHashMap<>();
            CountDownLatch all = new CountDownLatch(5);
            client.basicConsume("amq.rabbitmq.reply-to", true, new DefaultConsumer(client) {
                @Override
                public void handleDelivery(String tag, Envelope env, AMQP.BasicProperties p, byte[] body) {
                    replies.put(p.getCorrelationId(), text(body));
                    all.countDown();
                }
            });
            for (int i = 1; i <= 5; i++) {
                AMQP.BasicProperties props = new AMQP.BasicProperties.Builder()
                        .correlationId("call-" + i).replyTo("amq.rabbitmq.reply-to").build();
                client.basicPublish("", rpcQueue, props, bytes(Integer.toString(i)));
            }
            check(all.await(WAIT_S, TimeUnit.SECONDS), "5 replies");
            for (int i = 1; i <= 5; i++) {
                check(Integer.toString(i * i).equals(replies.get("call-" + i)), "reply to call-" + i);
            }
        }
    }

    // ----- reliability -----

    static void publisherConfirms() throws Exception {
        try (Connection c = factory().newConnection(); Channel ch = c.createChannel()) {
            String q = unique("confirmed");
            ch.queueDeclare(q, true, false, false, null);
            ch.confirmSelect();
            for (int i = 0; i < 1000; i++) {
                ch.basicPublish("", q, MessageProperties.PERSISTENT_BASIC, bytes("m" + i));
            }
            ch.waitForConfirmsOrDie(WAIT_S * 1000);
            check(ch.messageCount(q) == 1000, "1000 messages in the queue after their confirms");
            ch.queueDelete(q);
        }
    }

    static void mandatoryPublishesComeBack() throws Exception {
        try (Connection c = factory().newConnection(); Channel ch = c.createChannel()) {
            CompletableFuture<Integer> code = new CompletableFuture<>();
            ch.addReturnListener(r -> code.complete(r.getReplyCode()));
            ch.basicPublish("amq.direct", unique("nobody"), true, null, bytes("lost?"));
            check(code.get(WAIT_S, TimeUnit.SECONDS) == 312, "basic.return with 312 NO_ROUTE");
        }
    }

    static void transactions() throws Exception {
        try (Connection c = factory().newConnection(); Channel ch = c.createChannel()) {
            String q = unique("tx");
            ch.queueDeclare(q, false, false, false, null);
            ch.txSelect();
            ch.basicPublish("", q, null, bytes("rolled back"));
            ch.txRollback();
            check(ch.messageCount(q) == 0, "nothing after rollback");
            ch.basicPublish("", q, null, bytes("committed"));
            ch.txCommit();
            check(ch.messageCount(q) == 1, "one message after commit");
            ch.queueDelete(q);
        }
    }

    static void deadLetteringOnReject() throws Exception {
        try (Connection c = factory().newConnection(); Channel ch = c.createChannel()) {
            String dlx = unique("dlx"), dead = unique("dead"), work = unique("work");
            ch.exchangeDeclare(dlx, BuiltinExchangeType.FANOUT);
            ch.queueDeclare(dead, false, false, false, null);
            ch.queueBind(dead, dlx, "");
            ch.queueDeclare(work, false, false, false, Map.of("x-dead-letter-exchange", dlx));
            ch.basicPublish("", work, null, bytes("poison"));
            GetResponse r = getWithin(ch, work, false);
            check(r != null, "got the message");
            ch.basicReject(r.getEnvelope().getDeliveryTag(), false);
            GetResponse d = getWithin(ch, dead, true);
            check(d != null && text(d.getBody()).equals("poison"), "dead-lettered");
            Object deaths = d.getProps().getHeaders().get("x-death");
            check(deaths instanceof List && !((List<?>) deaths).isEmpty(), "x-death header: " + deaths);
            Map<?, ?> death = (Map<?, ?>) ((List<?>) deaths).get(0);
            check("rejected".equals(String.valueOf(death.get("reason"))), "reason rejected: " + death);
            ch.queueDelete(work);
            ch.queueDelete(dead);
            ch.exchangeDelete(dlx);
        }
    }

    static void largeBodiesAndHeadersRoundTrip() throws Exception {
        try (Connection c = factory().newConnection(); Channel ch = c.createChannel()) {
            String q = unique("large");
            ch.queueDeclare(q, false, false, true, null);
            byte[] body = new byte[3 * 1024 * 1024 + 17];
            new Random(7).nextBytes(body);
            Map<String, Object> headers = new HashMap<>();
            headers.put("int", 42);
            headers.put("long", 1L << 40);
            headers.put("bool", true);
            headers.put("text", "wörter");
            headers.put("list", List.of(1, "two"));
            AMQP.BasicProperties props = new AMQP.BasicProperties.Builder()
                    .headers(headers).contentType("application/octet-stream").priority(3)
                    .timestamp(new Date(1_700_000_000_000L)).messageId("m-1").build();
            ch.basicPublish("", q, props, body);
            GetResponse r = getWithin(ch, q, true);
            check(r != null && Arrays.equals(r.getBody(), body), "3 MiB body intact");
            Map<String, Object> h = r.getProps().getHeaders();
            check(((Number) h.get("int")).intValue() == 42 && ((Number) h.get("long")).longValue() == 1L << 40
                  && Boolean.TRUE.equals(h.get("bool")) && String.valueOf(h.get("text")).equals("wörter")
                  && String.valueOf(h.get("list")).equals("[1, two]"), "headers intact: " + h);
            check("m-1".equals(r.getProps().getMessageId()) && r.getProps().getPriority() == 3
                  && r.getProps().getTimestamp().getTime() == 1_700_000_000_000L, "properties intact");
        }
    }

    // ----- errors and notifications -----

    static void channelErrorsCloseTheChannelOnly() throws Exception {
        try (Connection c = factory().newConnection()) {
            Channel ch = c.createChannel();
            try {
                ch.queueDeclarePassive(unique("missing"));
                check(false, "passive declare of a missing queue succeeded");
            } catch (IOException e) {
                ShutdownSignalException s = (ShutdownSignalException) e.getCause();
                AMQP.Channel.Close close = (AMQP.Channel.Close) s.getReason();
                check(close.getReplyCode() == 404, "404 NOT_FOUND: " + close.getReplyText());
            }
            check(!ch.isOpen() && c.isOpen(), "the channel closed, the connection open");
            Channel other = c.createChannel();
            other.queueDeclare(unique("after"), false, true, true, null);
        }
    }

    static void exclusiveQueuesAreLockedToTheirConnection() throws Exception {
        try (Connection owner = factory().newConnection(); Connection other = factory().newConnection()) {
            String q = owner.createChannel().queueDeclare(unique("mine"), false, true, false, null).getQueue();
            Channel ch = other.createChannel();
            try {
                ch.basicConsume(q, true, new DefaultConsumer(ch));
                check(false, "consumed another connection's exclusive queue");
            } catch (IOException e) {
                AMQP.Channel.Close close = (AMQP.Channel.Close) ((ShutdownSignalException) e.getCause()).getReason();
                check(close.getReplyCode() == 405, "405 RESOURCE_LOCKED: " + close.getReplyText());
            }
        }
    }

    static void consumersHearWhenTheirQueueIsDeleted() throws Exception {
        try (Connection c = factory().newConnection()) {
            String q = unique("doomed");
            Channel ch = c.createChannel();
            ch.queueDeclare(q, false, false, false, null);
            CompletableFuture<String> cancelled = new CompletableFuture<>();
            String tag = ch.basicConsume(q, true, new DefaultConsumer(ch) {
                @Override
                public void handleCancel(String consumerTag) {
                    cancelled.complete(consumerTag);
                }
            });
            c.createChannel().queueDelete(q);
            check(tag.equals(cancelled.get(WAIT_S, TimeUnit.SECONDS)), "basic.cancel from the broker");
        }
    }

    // ----- recovery -----

    static void automaticRecoveryAfterTheBrokerClosesTheConnection() throws Exception {
        check(httpPort > 0, "needs the management API (--http-port)");
        ConnectionFactory f = factory();
        f.setAutomaticRecoveryEnabled(true);
        f.setNetworkRecoveryInterval(200);
        String name = unique("recovering");
        try (Connection c = f.newConnection(name)) {
            Channel ch = c.createChannel();
            String q = ch.queueDeclare().getQueue();
            String ex = unique("recovery");
            ch.exchangeDeclare(ex, BuiltinExchangeType.DIRECT, false, true, null);
            ch.queueBind(q, ex, "k");
            BlockingQueue<String> got = collect(ch, q);
            ch.basicPublish(ex, "k", null, bytes("before"));
            check(next(got).equals("before"), "delivery before");
            CountDownLatch recovered = new CountDownLatch(1);
            ((Recoverable) c).addRecoveryListener(new RecoveryListener() {
                public void handleRecovery(Recoverable r) {
                    recovered.countDown();
                }

                public void handleRecoveryStarted(Recoverable r) {
                }
            });
            closeConnectionOverHttp(name);
            check(recovered.await(WAIT_S, TimeUnit.SECONDS), "recovered");
            // The server-named queue, its exchange, binding and consumer were declared again.
            ch.basicPublish(ex, "k", null, bytes("after"));
            check(next(got).equals("after"), "delivery after recovery");
        }
    }

    /** Closes the connection named `name` (its client-provided name) through warren's
     *  management API, as `DELETE /api/connections/{name}` does on RabbitMQ. */
    static void closeConnectionOverHttp(String clientName) throws Exception {
        String auth = "Basic " + Base64.getEncoder().encodeToString(bytes("guest:guest"));
        String connName = null;
        for (int i = 0; i < 50 && connName == null; i++) {
            HttpURLConnection get = (HttpURLConnection) URI.create(
                    "http://" + host + ":" + httpPort + "/api/connections").toURL().openConnection();
            get.setRequestProperty("Authorization", auth);
            String json = new String(get.getInputStream().readAllBytes(), StandardCharsets.UTF_8);
            connName = topLevelField(json, "user_provided_name", clientName, "name");
            if (connName == null) Thread.sleep(100);
        }
        check(connName != null, "connection " + clientName + " listed by /api/connections");
        HttpURLConnection del = (HttpURLConnection) URI.create("http://" + host + ":" + httpPort
                + "/api/connections/" + URLEncoder.encode(connName, StandardCharsets.UTF_8).replace("+", "%20"))
                .toURL().openConnection();
        del.setRequestMethod("DELETE");
        del.setRequestProperty("Authorization", auth);
        check(del.getResponseCode() / 100 == 2, "DELETE of " + connName + " answered " + del.getResponseCode());
    }

    /** In a JSON array of objects, the string field `want` of the object whose string
     *  field `key` is `value` (fields of the objects themselves, not of nested ones). */
    static String topLevelField(String json, String key, String value, String want) {
        Map<String, String> fields = new HashMap<>();
        int depth = 0;
        String lastString = null, pendingKey = null;
        for (int i = 0; i < json.length(); i++) {
            char ch = json.charAt(i);
            if (ch == '"') {
                StringBuilder b = new StringBuilder();
                for (i++; json.charAt(i) != '"'; i++) {
                    if (json.charAt(i) == '\\') i++;
                    b.append(json.charAt(i));
                }
                lastString = b.toString();
                if (depth == 2 && pendingKey != null) {
                    fields.put(pendingKey, lastString);
                    pendingKey = null;
                }
                continue;
            }
            switch (ch) {
                case ':' -> pendingKey = depth == 2 ? lastString : null;
                case ',' -> pendingKey = null;
                case '{', '[' -> {
                    depth++;
                    pendingKey = null;
                    if (depth == 2) fields.clear();
                }
                case '}', ']' -> {
                    if (depth == 2 && value.equals(fields.get(key))) return fields.get(want);
                    depth--;
                }
                default -> {
                }
            }
        }
        return null;
    }

    // ----- runner -----

    static String jsonString(String s) {
        StringBuilder b = new StringBuilder("\"");
        for (char ch : s.toCharArray()) {
            switch (ch) {
                case '"' -> b.append("\\\"");
                case '\\' -> b.append("\\\\");
                case '\n' -> b.append("\\n");
                default -> {
                    if (ch < 0x20) b.append(String.format("\\u%04x", (int) ch));
                    else b.append(ch);
                }
            }
        }
        return b.append('"').toString();
    }

    public static void main(String[] args) throws Exception {
        Path json = null;
        for (int i = 0; i < args.length; i++) {
            switch (args[i]) {
                case "--host" -> host = args[++i];
                case "--port" -> port = Integer.parseInt(args[++i]);
                case "--http-port" -> httpPort = Integer.parseInt(args[++i]);
                case "--json" -> json = Path.of(args[++i]);
                default -> throw new IllegalArgumentException("unknown argument " + args[i]);
            }
        }
        Map<String, Body> tests = new LinkedHashMap<>();
        tests.put("helloWorld", JavaClientTest::helloWorld);
        tests.put("workQueuesShareWorkWithPrefetchAndAcks", JavaClientTest::workQueuesShareWorkWithPrefetchAndAcks);
        tests.put("unackedMessagesAreRedeliveredWhenTheChannelCloses",
                  JavaClientTest::unackedMessagesAreRedeliveredWhenTheChannelCloses);
        tests.put("publishSubscribeOverFanout", JavaClientTest::publishSubscribeOverFanout);
        tests.put("routingAndTopics", JavaClientTest::routingAndTopics);
        tests.put("rpcOverDirectReplyTo", JavaClientTest::rpcOverDirectReplyTo);
        tests.put("publisherConfirms", JavaClientTest::publisherConfirms);
        tests.put("mandatoryPublishesComeBack", JavaClientTest::mandatoryPublishesComeBack);
        tests.put("transactions", JavaClientTest::transactions);
        tests.put("deadLetteringOnReject", JavaClientTest::deadLetteringOnReject);
        tests.put("largeBodiesAndHeadersRoundTrip", JavaClientTest::largeBodiesAndHeadersRoundTrip);
        tests.put("channelErrorsCloseTheChannelOnly", JavaClientTest::channelErrorsCloseTheChannelOnly);
        tests.put("exclusiveQueuesAreLockedToTheirConnection", JavaClientTest::exclusiveQueuesAreLockedToTheirConnection);
        tests.put("consumersHearWhenTheirQueueIsDeleted", JavaClientTest::consumersHearWhenTheirQueueIsDeleted);
        tests.put("automaticRecoveryAfterTheBrokerClosesTheConnection",
                  JavaClientTest::automaticRecoveryAfterTheBrokerClosesTheConnection);
        List<String> records = new ArrayList<>();
        int failed = 0;
        ExecutorService pool = Executors.newCachedThreadPool(r -> {
            Thread t = new Thread(r);
            t.setDaemon(true);
            return t;
        });
        for (Map.Entry<String, Body> t : tests.entrySet()) {
            String outcome = "passed", detail = "";
            Future<?> run = pool.submit(() -> {
                t.getValue().run();
                return null;
            });
            try {
                run.get(60, TimeUnit.SECONDS);
            } catch (ExecutionException | TimeoutException e) {
                run.cancel(true);
                Throwable cause = e instanceof ExecutionException ? e.getCause() : e;
                StringWriter trace = new StringWriter();
                cause.printStackTrace(new PrintWriter(trace));
                outcome = "failed";
                detail = trace + "\n" + cause;
                failed++;
            }
            System.out.println(t.getKey() + " ... " + outcome + (detail.isEmpty() ? "" : "\n" + detail));
            records.add("{\"id\": " + jsonString("JavaClientTest." + t.getKey()) + ", \"outcome\": \""
                        + outcome + "\", \"detail\": " + jsonString(detail) + "}");
        }
        if (json != null) {
            Files.writeString(json, "{\"records\": [\n" + String.join(",\n", records) + "\n]}\n");
        }
        System.out.println((tests.size() - failed) + " of " + tests.size() + " passed");
        System.exit(0);
    }
}
