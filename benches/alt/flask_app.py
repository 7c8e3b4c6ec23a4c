"""flask_app.py — WeChat callback in Flask with wechatpy, run under gunicorn (2 sync workers)
behind nginx proxy_pass: wechatpy's check_signature, parse_message and TextReply, echoing
Content. Token "benchtoken"; no timestamp window (wechatpy checks none for plaintext mode)."""
from flask import Flask, abort, request
from wechatpy import parse_message
from wechatpy.exceptions import InvalidSignatureException
from wechatpy.replies import TextReply
from wechatpy.utils import check_signature

TOKEN = "benchtoken"
app = Flask(__name__)


@app.route("/weixin", methods=["GET", "POST"])
def weixin():
    try:
        check_signature(
            TOKEN,
            request.args.get("signature", ""),
            request.args.get("timestamp", ""),
            request.args.get("nonce", ""),
        )
    except InvalidSignatureException:
        abort(403)
    if request.method == "GET":
        return request.args.get("echostr", "")
    msg = parse_message(request.get_data())
    if msg.type != "text":
        return "success"
    reply = TextReply(content="You said: " + msg.content, message=msg)
    return reply.render(), 200, {"Content-Type": "text/xml; charset=utf-8"}
