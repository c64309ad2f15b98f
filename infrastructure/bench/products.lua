-- Every request a distinct product: a per-thread random prefix and a counter.
local counter = 0
local prefix = nil
local image = os.getenv("IMAGE_BASE")
request = function()
  if prefix == nil then
    math.randomseed(os.time() + math.floor(os.clock() * 1000000))
    prefix = string.format("w%08x", math.random(0, 0x7fffffff))
  end
  counter = counter + 1
  local id = prefix .. "-" .. counter
  local body = '{"mallId":"wrk","productId":"' .. id .. '","title":"title of ' .. id ..
    '","content":"a product posted by wrk","price":"12.50","imageUrl":"' .. image ..
    '/img/' .. id .. '.png"}'
  return wrk.format("POST", "/api/v1/products", {["Content-Type"] = "application/json"}, body)
end
