<?php
// callback.php — the classic PHP WeChat callback (as WeChat's own PHP samples did it), run by
// Debian's php-fpm: verify the signature, parse the body with SimpleXML, reply with a text
// message echoing Content. Token "benchtoken"; no timestamp window (the benchmark replays one
// signed request).
const TOKEN = 'benchtoken';

function cdata($s) {
    return '<![CDATA[' . str_replace(']]>', ']]]]><![CDATA[>', $s) . ']]>';
}

$signature = isset($_GET['signature']) ? (string)$_GET['signature'] : '';
$timestamp = isset($_GET['timestamp']) ? (string)$_GET['timestamp'] : '';
$nonce     = isset($_GET['nonce']) ? (string)$_GET['nonce'] : '';
$parts = array(TOKEN, $timestamp, $nonce);
sort($parts, SORT_STRING);
if (!hash_equals(sha1(implode('', $parts)), $signature)) {
    http_response_code(403);
    echo 'forbidden';
    exit;
}
if ($_SERVER['REQUEST_METHOD'] === 'GET') {
    echo isset($_GET['echostr']) ? $_GET['echostr'] : '';
    exit;
}
$body = file_get_contents('php://input');
libxml_use_internal_errors(true);
$msg = simplexml_load_string($body, 'SimpleXMLElement', LIBXML_NOCDATA | LIBXML_NONET);
if ($msg === false) {
    http_response_code(400);
    echo 'bad xml';
    exit;
}
header('Content-Type: text/xml; charset=utf-8');
if ((string)$msg->MsgType !== 'text') {
    echo 'success';
    exit;
}
echo '<xml><ToUserName>', cdata((string)$msg->FromUserName), '</ToUserName>',
     '<FromUserName>', cdata((string)$msg->ToUserName), '</FromUserName>',
     '<CreateTime>', time(), '</CreateTime>',
     '<MsgType><![CDATA[text]]></MsgType>',
     '<Content>', cdata('You said: ' . (string)$msg->Content), '</Content></xml>';
